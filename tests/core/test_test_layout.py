"""The test tree's own rules: shared builders live in tests/helpers.py, and no test imports a conftest."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[2]
TEST_FILES = sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "examples").glob("*/tests/*.py")])


def test_no_test_module_imports_a_conftest():
    importing = [str(p.relative_to(ROOT)) for p in TEST_FILES
                 if re.search(r"^\s*from\s+\S*conftest\s+import|^\s*import\s+\S*conftest", p.read_text(), re.M)]
    assert importing == [], f"import shared helpers from tests/helpers.py, not from a conftest: {importing}"


def test_the_shared_helpers_import_without_the_frameworks():
    import subprocess
    import sys

    code = ("import sys, tests.helpers; "
            "print(','.join(m for m in ('transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
