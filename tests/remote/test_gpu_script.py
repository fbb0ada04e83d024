"""benchmarks/remote_gpu.py is prepared for a GPU machine; here it runs small on the CPU against the
suite's server (its tiny Llama), and the server-start path it uses (``device_map="auto"``, a dtype)
loads on the CPU."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch
from nnsight_transformers import LanguageModel

from nnsight_remote import ModelServer
from nnsight_remote.serve import ModelSpec, load_model

from tests.remote.test_server import InProcess
from tests.helpers import MID

ROOT = pathlib.Path(__file__).parents[2]


def test_the_gpu_parity_script_runs_small_on_the_cpu(server):
    command = [sys.executable, str(ROOT / "benchmarks" / "remote_gpu.py"), "--device", "cpu", "--dtype", "float32",
               "--url", server.url, "--api-key", server.key, "--model", server.llama, "--checkpoint", server.llama,
               "--repeat", "1", "--new-tokens", "4"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("largest |probability difference|", "largest relative difference (layer", "ran on",
                 "largest relative logits difference", "greedy ids", "all checks within tolerance"):
        assert line in out.stdout, (line, out.stdout)
    assert "OVER" not in out.stdout and "FAILED" not in out.stdout


def test_a_device_map_auto_server_model_loads_and_answers_on_the_cpu(server):
    spec = ModelSpec(name="llama", key=server.llama, load_kwargs={"device_map": "auto", "dtype": torch.float32})
    served = ModelServer(load_model(spec), "llama")
    client, local = LanguageModel(server.llama), LanguageModel(server.llama)
    values = []
    for model, backend in ((local, None), (client, InProcess(served))):
        with model.trace(MID, backend=backend):
            values.append(model.model.layers[1].output.save())
    torch.testing.assert_close(values[1].value, values[0].value)
    assert not client.dispatched
