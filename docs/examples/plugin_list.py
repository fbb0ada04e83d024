"""Run ``python -m nnsight_core plugins`` and show what it prints."""

import subprocess
import sys
from importlib import metadata

from nnsight_core.plugins import blocked_plugins

result = subprocess.run([sys.executable, "-m", "nnsight_core", "plugins"],
                        capture_output=True, text=True, check=True)
print(result.stdout, end="")

# Every installed entry point of the group that is not blocked is listed, with its
# distribution and version.
for entry_point in metadata.entry_points(group="nnsight_core"):
    if entry_point.name not in blocked_plugins():
        dist = entry_point.dist
        assert f"\n{entry_point.name}\n  distribution  {dist.name} {dist.version}\n" in result.stdout
