"""Plugin tooling: `python -m nnsight_core plugins`, NNSIGHT_BLOCK_PLUGINS, NNSIGHT_TRACE_HOOKS,
and the error for a plugin that fails to load."""

import importlib
import io
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from nnsight_core import InputError, PluginLoadError, get_plugin_manager, hookimpl, hookspecs
from nnsight_core.__main__ import main, plugin_infos
from nnsight_core.plugins import _brief, blocked_plugins, enable_hook_tracing
from nnsight_torch import NNsight

SPEC_ORDER = [name for name, fn in vars(hookspecs).items() if hasattr(fn, "nnsight_core_spec")]


def run_python(*args, **env):
    """Run the interpreter with ``args`` in a clean plugin environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NNSIGHT_")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**base, **env})


def implemented_hooks(module):
    """Hook names the module marks with @hookimpl, read from the module itself, in spec order."""
    names = {name for name, fn in vars(module).items() if hasattr(fn, "nnsight_core_impl")}
    return [name for name in SPEC_ORDER if name in names]


def installed_entry_points():
    return [ep for ep in metadata.entry_points(group="nnsight_core") if ep.name not in blocked_plugins()]


# -- the listing ---------------------------------------------------------------------------


def test_plugins_lists_every_entry_point_with_distribution_version_and_hooks(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    entry_points = installed_entry_points()
    assert entry_points, "no adapter is installed"
    assert out.startswith(f"{len(entry_points)} plugin")
    for ep in entry_points:
        module = importlib.import_module(ep.value)
        hooks = implemented_hooks(module)
        assert hooks, ep.name
        block = f"\n{ep.name}\n  distribution  {ep.dist.name} {ep.dist.version}\n  module        {ep.value}\n"
        assert block in out, f"{ep.name} is missing or wrong in:\n{out}"
        line = out[out.index(block) + len(block):].splitlines()[0]
        listed = [h.split(" (")[0] for h in line.removeprefix("  hooks         ").split(", ")]
        assert listed == hooks, ep.name


def test_plugin_infos_shows_pluggy_options_of_each_implementation():
    infos = {info.name: info for info in plugin_infos()}
    torch_info = infos["torch"]
    assert torch_info.distribution == metadata.distribution("nnsight-torch").metadata["Name"]
    assert torch_info.version == metadata.version("nnsight-torch")
    # The torch adapter marks every hook trylast (read from its implementations).
    module = importlib.import_module("nnsight_torch.plugin")
    assert all(getattr(module, h).nnsight_core_impl["trylast"] for h in implemented_hooks(module))
    assert torch_info.hooks == [f"{h} (trylast)" for h in implemented_hooks(module)]


class Logger:
    @hookimpl(wrapper=True)
    def nnsight_execute(self, model):
        return (yield)

    @hookimpl(tryfirst=True)
    def nnsight_prepare_inputs(self, model, inputs):
        return None


def test_a_plugin_registered_at_run_time_is_listed_as_such(capsys):
    manager = get_plugin_manager()
    logger = Logger()
    manager.register(logger, name="logger")
    try:
        assert main(["plugins"]) == 0
    finally:
        manager.unregister(logger)
    out = capsys.readouterr().out
    assert ("\nlogger\n  distribution  (registered at run time, not by entry point)\n"
            "  module        Logger\n"
            "  hooks         nnsight_prepare_inputs (tryfirst), nnsight_execute (wrapper)\n") in out
    assert main(["plugins"]) == 0
    assert "logger" not in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    result = run_python("-m", "nnsight_core", "plugins")
    assert result.returncode == 0, result.stderr
    for ep in installed_entry_points():
        assert f"\n{ep.name}\n  distribution  {ep.dist.name} {ep.dist.version}\n" in result.stdout
    assert result.stdout.rstrip().endswith(
        "blocked by NNSIGHT_BLOCK_PLUGINS: none\nhook tracing (NNSIGHT_TRACE_HOOKS): off")


@pytest.mark.parametrize("argv", [[], ["plugin"], ["plugins", "--extra"]])
def test_a_bad_command_line_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m nnsight_core" in capsys.readouterr().err


# -- NNSIGHT_BLOCK_PLUGINS --------------------------------------------------------------------


def test_blocked_plugins_are_not_loaded_and_unknown_names_are_reported():
    result = run_python("-m", "nnsight_core", "plugins", NNSIGHT_BLOCK_PLUGINS=" torch, nosuch ,")
    assert result.returncode == 0, result.stderr
    assert "\ntorch\n" not in result.stdout
    assert ("blocked by NNSIGHT_BLOCK_PLUGINS: torch, nosuch (no installed entry point has this name)"
            in result.stdout)


def test_blocked_plugins_parses_the_variable(monkeypatch):
    monkeypatch.setenv("NNSIGHT_BLOCK_PLUGINS", " a,, b ,")
    assert blocked_plugins() == ["a", "b"]
    monkeypatch.delenv("NNSIGHT_BLOCK_PLUGINS")
    assert blocked_plugins() == []


# -- a plugin that fails to load ------------------------------------------------------------------


@pytest.fixture
def broken_distribution(tmp_path):
    """A folder holding an installed distribution whose entry point names a missing module."""
    info = tmp_path / "nnsight_broken-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnsight-broken\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text("[nnsight_core]\nbroken = nnsight_broken_missing.plugin\n")
    return str(tmp_path)


def test_a_plugin_that_fails_to_load_is_named_with_the_fix(broken_distribution):
    code = ("import torch\nfrom nnsight_torch import NNsight\n"
            "NNsight(torch.nn.Linear(2, 2)).trace(torch.ones(1, 2), trace=False)")
    result = run_python("-c", code, PYTHONPATH=broken_distribution)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("nnsight_core.errors.PluginLoadError: the nnsight_core entry point 'broken' "
                    "(nnsight_broken_missing.plugin, distribution nnsight-broken 0.2.0) failed to load: "
                    "ModuleNotFoundError: No module named 'nnsight_broken_missing'. Fix or uninstall "
                    "that distribution, or skip the plugin with NNSIGHT_BLOCK_PLUGINS=broken.")
    assert "ModuleNotFoundError" in result.stderr.split("direct cause")[0]  # the cause is chained
    fixed = run_python("-c", code, PYTHONPATH=broken_distribution, NNSIGHT_BLOCK_PLUGINS="broken")
    assert fixed.returncode == 0, fixed.stderr


def test_the_command_reports_a_plugin_that_fails_to_load_without_a_traceback(broken_distribution):
    result = run_python("-m", "nnsight_core", "plugins", PYTHONPATH=broken_distribution)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("python -m nnsight_core: the nnsight_core entry point 'broken'")
    assert "Traceback" not in result.stderr
    assert issubclass(PluginLoadError, ImportError)


# -- NNSIGHT_TRACE_HOOKS ----------------------------------------------------------------------


TRACED = """
import torch
from nnsight_torch import NNsight
model = NNsight(torch.nn.Linear(5, 2))
with model.trace(torch.ones(3, 5)):
    out = model.output.save()
print("done", tuple(out.shape))
"""


def test_trace_hooks_variable_prints_every_hook_call_to_stderr():
    result = run_python("-c", TRACED, NNSIGHT_TRACE_HOOKS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done (3, 2)\n"
    lines = [line for line in result.stderr.splitlines() if line.startswith("[nnsight_core] ")]
    assert [line.split()[1].split("(")[0] for line in lines] == [
        "nnsight_prepare_inputs", "nnsight_prepare_inputs", "nnsight_execute", "nnsight_execute"]
    assert lines[0].startswith("[nnsight_core] nnsight_prepare_inputs(model=NNsight, "
                               "inputs=(tensor(3, 5),), kwargs={}) asks: ")
    assert lines[0].endswith(", torch")  # trylast: asked after every other adapter
    assert lines[1] == "[nnsight_core] nnsight_prepare_inputs returned (((tensor(3, 5),), {}), 3)"
    assert lines[3] == "[nnsight_core] nnsight_execute returned tensor(3, 2)"


@pytest.mark.parametrize("value", ["", "0"])
def test_trace_hooks_variable_off(value):
    result = run_python("-c", TRACED, NNSIGHT_TRACE_HOOKS=value)
    assert result.returncode == 0, result.stderr
    assert "[nnsight_core]" not in result.stderr


def test_enable_hook_tracing_reports_errors_and_stops():
    model = NNsight(torch.nn.Linear(5, 2))
    stream = io.StringIO()
    stop = enable_hook_tracing(stream=stream)
    try:
        with pytest.raises(InputError):
            model.trace(3.0, trace=False)
    finally:
        stop()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[nnsight_core] nnsight_prepare_inputs(model=NNsight, inputs=(3.0,), kwargs={})")
    assert lines[1].startswith("[nnsight_core] nnsight_prepare_inputs raised InputError: NNsight found no tensor")
    assert len(lines) == 2
    model.trace(torch.ones(1, 5), trace=False)
    assert len(stream.getvalue().splitlines()) == 2  # stopped: nothing more


def test_brief_summaries():
    assert _brief(torch.zeros(2, 3)) == "tensor(2, 3)"
    assert _brief((torch.zeros(1),)) == "(tensor(1),)"
    assert _brief(list(range(10))) == "[0, 1, 2, 3, ...]"
    assert _brief({"input_ids": torch.zeros(1, 4, dtype=torch.long)}) == "{'input_ids': tensor(1, 4)}"
    assert _brief("x" * 50) == repr("x" * 37 + "...")
    assert _brief([[[[1]]]]) == "[[[list]]]"
    assert _brief(NNsight(torch.nn.Linear(1, 1))) == "NNsight"
