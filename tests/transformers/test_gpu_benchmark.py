"""benchmarks/gpu.py is prepared for a CUDA machine; here it must run on the CPU in its small
configuration (a tiny Llama from a config) and print every case with its ratio and calls."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]


def test_the_gpu_benchmark_runs_on_the_cpu_in_its_small_configuration():
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--dtype", "float32",
               "--tiny", "--rounds", "1", "--calls", "1", "--warmup", "0", "--new-tokens", "3",
               "--invokes", "3"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for case in ("raw", "empty", "save all", "1 edit", "raw generate", "generate saves", "raw batch",
                 "3 invokes"):
        lines = [line for line in out.stdout.splitlines() if line.strip().startswith(case + " ")]
        assert lines and "x raw" in lines[0] and "calls" in lines[0], (case, out.stdout)
