"""``rename=`` on NNsight: aliases of child names (every depth) and of paths (from the root).

Expected values come from raw forward hooks on the real module paths and direct calls.
"""

import pytest
import torch

from nnsight_core import EnvoyAttributeError, ModuleIndexError, RenameError, TraceStateError
from nnsight_core.graph import Graph
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from tests.helpers import raw_hooks


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Linear(4, 4)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class Body(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block(), Block()])
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class Decoder(torch.nn.Module):
    """A decoder-like tree: ``model.layers[i].self_attn`` / ``.mlp``, ``model.norm``, ``head``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Body()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.model(x))


RENAME = {"model.layers": "layers", "self_attn": "attn", "model.norm": "ln_final", "head": "lm_head"}


@pytest.fixture
def dec():
    return Decoder()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(3, 4)


def test_aliases_reach_the_same_envoys_and_real_names_keep_working(dec):
    model = NNsight(dec, rename=RENAME)
    assert model.layers is model.model.layers
    assert model.layers[1] is model.model.layers[1]
    assert model.layers[2].attn is model.model.layers[2].self_attn      # a name alias at every depth
    assert model.ln_final is model.model.norm and model.lm_head is model.head
    assert model["lm_head"] is model.head and model.layers[0]["attn"] is model.layers[0].self_attn
    assert [e._module for e in model.layers] == list(dec.model.layers)


def test_print_and_module_tree_show_torch_names(dec):
    before = repr(dec)
    model = NNsight(dec, rename=RENAME)
    assert repr(model) == str(model) == before == repr(dec)
    assert repr(model.layers) == repr(dec.model.layers)
    assert [n for n, _ in dec.named_modules()] == [n for n, _ in Decoder().named_modules()]


def test_reads_through_aliases_equal_raw_hooks(dec, x):
    model = NNsight(dec, rename=RENAME)
    with model.trace(x):
        attn = model.layers[1].attn.output.save()
        resid = model.layers[2].output.save()
        resid_in = model.layers[2].input.save()
        final = model.ln_final.output.save()
        logits = model.lm_head.output.save()
    seen = {}
    hooks = {p: (lambda m, a, o, p=p: seen.__setitem__(p, (a[0].clone(), o.clone())))
             for p in ("model.layers.1.self_attn", "model.layers.2", "model.norm", "head")}
    with torch.no_grad(), raw_hooks(dec, hooks):
        expected = dec(x)
    assert torch.equal(attn.value, seen["model.layers.1.self_attn"][1])
    assert torch.equal(resid.value, seen["model.layers.2"][1])
    assert torch.equal(resid_in.value, seen["model.layers.2"][0])
    assert torch.equal(final.value, seen["model.norm"][1])
    assert torch.equal(logits.value, expected)
    assert hook_count(dec) == 0


def test_edits_through_aliases_equal_raw_hook_edits(dec, x):
    model = NNsight(dec, rename=RENAME)
    with model.trace(x):
        model.layers[0].attn.output[:, 1] = 0
        model.ln_final.output = model.ln_final.output * 2
        out = model.output.save()

    def zero(m, a, o):
        o = o.clone()
        o[:, 1] = 0
        return o

    with torch.no_grad(), raw_hooks(dec, {"model.layers.0.self_attn": zero,
                                          "model.norm": lambda m, a, o: o * 2}):
        expected = dec(x)
    assert torch.equal(out.value, expected)


def test_graph_records_real_module_paths(dec, x):
    model = NNsight(dec, rename=RENAME)
    with model.trace(x) as tracer:
        model.layers[1].attn.output.save()
        model.lm_head.output.save()
    paths = {n.target[0] for n in tracer.graph.nodes if n.op in ("output",)}
    assert paths == {"model.layers.1.self_attn", "head"}
    # A graph recorded through aliases runs on a wrapper without them (and back from JSON).
    plain = NNsight(dec)
    saved = plain.run_graph(Graph.from_json(tracer.graph.to_json()), x)
    with torch.no_grad():
        expected = dec(x)
    assert any(torch.equal(v, expected) for v in saved.values())


def test_alias_of_a_name_applies_at_every_depth_and_only_where_the_child_exists(dec):
    model = NNsight(dec, rename={"self_attn": "attn", "norm": "ln"})
    for i in range(3):
        assert model.model.layers[i].attn._module is dec.model.layers[i].self_attn
    assert model.model.ln._module is dec.model.norm
    with pytest.raises(EnvoyAttributeError, match=r"model\.model\.layers\[0\]\.ln does not exist"):
        model.model.layers[0].ln


def test_later_entries_override_and_identity_entries_are_ignored(dec):
    model = NNsight(dec, rename={"model.layers": "blocks", "head": "head"})
    assert model.blocks is model.model.layers


def test_dir_lists_aliases(dec):
    model = NNsight(dec, rename=RENAME)
    assert {"layers", "ln_final", "lm_head", "model", "head"} <= set(dir(model))
    assert {"attn", "self_attn", "mlp"} <= set(dir(model.layers[0]))
    assert "attn" not in dir(model.model)


def test_missing_child_error_lists_aliases_and_both_names(dec):
    model = NNsight(dec, rename=RENAME)
    with pytest.raises(EnvoyAttributeError) as info:
        model.layers[0].atn
    message = str(info.value)
    assert "model.model.layers[0].atn does not exist" in message
    assert "(alias model.layers[0])" in message                     # where the user wrote an alias
    assert "self_attn, mlp; aliases: attn (self_attn)" in message
    with pytest.raises(EnvoyAttributeError, match=r"aliases: layers \(model\.layers\)"):
        model.lyers
    with pytest.raises(ModuleIndexError, match=r"model\.model\.layers\[7\] does not exist: "
                                               r"model\.model\.layers \(alias model\.layers\) has 3 modules"):
        model.layers[7]
    with pytest.raises(EnvoyAttributeError, match=r"aliases: attn \(self_attn\)"):
        model.layers[0]["atn"]


@pytest.mark.parametrize("rename,match", [
    ({"model.layrs": "layers"}, r"model\.model\.layrs does not exist.*model\.model has no child 'layrs' "
                                r"\(its children are: layers, norm\)"),
    ({"self_atn": "attn"}, r"no module of this Decoder has a child named 'self_atn'"),
    ({"model.layers": "my.layers"}, r"alias 'my\.layers' .* must be one name"),
    ({"self_attn": "output"}, r"alias 'output' .* already an attribute of every envoy or of the wrapper"),
    ({"model.layers": "trace"}, r"alias 'trace'"),
    ({"model.norm": "head"}, r"alias 'head' for model\.model\.norm is already the name of model\.head"),
    ({"self_attn": 3}, r"must map a str"),
    ([("self_attn", "attn")], r"rename= takes a dict"),
    ({"model..layers": "x"}, r"is not a module path or child name"),
])
def test_bad_rename_tables_raise_rename_error(dec, rename, match):
    with pytest.raises(RenameError, match=match):
        NNsight(dec, rename=rename)
    assert hook_count(dec) == 0


def test_rename_error_is_a_value_error(dec):
    with pytest.raises(ValueError):
        NNsight(dec, rename={"nope": "x"})


def test_aliases_survive_to_edit_and_next(x):
    from tests.helpers import Shared
    shared = Shared()
    model = NNsight(shared, rename={"block": "b"})
    with model.trace(x):
        first = model.b.output.save()
        second = model.b.next().output.save()
    with torch.no_grad():
        assert torch.equal(second.value, shared.block(shared.block(x)))
        assert torch.equal(first.value, shared.block(x))
    model.to(torch.float64)
    assert model.b is model.block
    with model.edit() as edited:
        model.b.output[:] = 0
    assert edited.b._module is shared.block
    with edited.trace(x.double()):
        out = edited.output.save()
    with torch.no_grad():
        zeros = torch.zeros(3, 4, dtype=torch.float64)      # the edit: the first call's output
        assert torch.equal(out.value, shared.head(shared.block(zeros)))


def test_assigning_a_misspelt_alias_in_a_trace_still_refuses(dec, x):
    model = NNsight(dec, rename=RENAME)
    with pytest.raises(EnvoyAttributeError):
        with model.trace(x):
            model.layers[0].atn = 1
    with pytest.raises(TraceStateError):
        model.layers[0].attn.output
