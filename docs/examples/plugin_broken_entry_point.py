"""PluginLoadError: an installed plugin's entry point fails to import."""

import pathlib
import shutil
import subprocess
import sys
import tempfile

# The mistake: a distribution whose `nnsight_core` entry point names a module that
# cannot be imported (a typo, a missing dependency). Here a minimal installed
# distribution, nnsight-broken, is written to a temporary folder on PYTHONPATH.
folder = pathlib.Path(tempfile.mkdtemp())
info = folder / "nnsight_broken-0.1.0.dist-info"
info.mkdir()
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnsight-broken\nVersion: 0.1.0\n")
(info / "entry_points.txt").write_text("[nnsight_core]\nbroken = nnsight_broken.plugin\n")

code = """
import torch
from nnsight_torch import NNsight
model = NNsight(torch.nn.Linear(2, 2))
print(model.trace(torch.ones(1, 2), trace=False).shape)
"""


def run(**env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that sees the broken distribution."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(folder), **env})


failed = run()
print(failed.stderr.strip().splitlines()[-1])
assert failed.returncode == 1 and "PluginLoadError" in failed.stderr

# The fix: repair or uninstall that distribution; until then, skip it by name.
fixed = run(NNSIGHT_BLOCK_PLUGINS="broken")
print(fixed.stdout.strip())
assert fixed.returncode == 0
shutil.rmtree(folder)
