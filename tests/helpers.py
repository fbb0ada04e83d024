"""Model builders and plain-PyTorch helpers shared by the test folders.

Builders make tiny, seeded models from configs (CPU, no network); the helpers compute
expected values with plain PyTorch (raw forward hooks, direct calls), never with the
library under test. Fixtures stay in each folder's ``conftest.py`` and build on these;
tests import from here (``from tests.helpers import ...``), never from a ``conftest``.
Heavy frameworks (transformers, diffusers) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

# -- plain torch modules -------------------------------------------------------------------------


def make_net(seed: int = 0) -> torch.nn.Sequential:
    """The tiny MLP of the torch tests: layer1 (5 -> 10), sigma1, layer2 (10 -> 2), sigma2."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([
        ("layer1", torch.nn.Linear(5, 10)),
        ("sigma1", torch.nn.Sigmoid()),
        ("layer2", torch.nn.Linear(10, 2)),
        ("sigma2", torch.nn.Sigmoid()),
    ]))


class Shared(torch.nn.Module):
    """Calls one submodule twice (like a tied layer or a generation step): head(block(block(x)))."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.block = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x)))


# -- tiny language models ------------------------------------------------------------------------

ARCHS = ("gpt2", "llama")

# Short, mid and long prompts of different token counts (checked by test_inputs.test_token_counts_differ).
SHORT = "Paris is the city of"
MID = "The Colosseum is in"
LONG = "The Eiffel Tower is in the city of"

CORPUS = [
    "The Eiffel Tower is in the city of Paris",
    "The Colosseum is in the city of Rome",
    "The Louvre is a museum in Paris",
    "Hello world, hello tower",
    "Rome and Paris are cities of Europe",
    "The city of light is Paris and the eternal city is Rome",
]

#: Where each architecture keeps its decoder layers (as a dotted path).
LAYERS = {"gpt2": "transformer.h", "llama": "model.layers"}
#: The MLP of layer 0.
MLP0 = {"gpt2": "transformer.h.0.mlp", "llama": "model.layers.0.mlp"}


@dataclass
class Tiny:
    """One saved tiny checkpoint plus a plain Hugging Face copy for expected values."""

    arch: str
    folder: str
    hf: torch.nn.Module          # AutoModelForCausalLM.from_pretrained(folder), eval mode
    tok: object                  # AutoTokenizer.from_pretrained(folder), untouched by the library
    eos: int

    @property
    def layers_path(self) -> str:
        return LAYERS[self.arch]

    def layer(self, i: int) -> torch.nn.Module:
        return self.hf.get_submodule(f"{self.layers_path}.{i}")

    def ids(self, text: str) -> torch.Tensor:
        """The prompt's token ids as a (1, n) tensor, exactly as the plain tokenizer makes them."""
        return self.tok(text, return_tensors="pt")["input_ids"]

    def logits(self, ids: torch.Tensor, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.hf(input_ids=ids, **kwargs).logits


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(CORPUS * 10, trainer)
    # No pad token on purpose: LanguageModel must set pad = eos and pad on the left.
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")


def build_model(arch: str, tok) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    eos = tok.eos_token_id
    # A larger initializer than the default 0.02 gives logits of order 1, so a wrong
    # position, mask or edit changes them far beyond the tolerances used here.
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                            eos_token_id=eos, bos_token_id=eos, initializer_range=0.3)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, eos_token_id=eos, bos_token_id=eos,
                             initializer_range=0.3)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def save_tiny_lms(root) -> dict[str, str]:
    """Save a tiny model and the tokenizer into ``root/<arch>`` for each architecture; return the folders."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = build_tokenizer()
    folders = {}
    for arch in ARCHS:
        folder = root / arch
        build_model(arch, tok).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[arch] = str(folder)
    return folders


def look_inside_attention(model) -> None:
    """Run ``model`` (a loaded tiny Llama wrapper) once looking inside layer 0's attention call, so that
    envoys learn which function ``attention_interface_0`` calls in this process (sdpa or eager: it is a
    local variable, known only from an execution; another test may have run eager attention last)."""
    with model.trace("Paris"):
        model.model.layers[0].self_attn.source.attention_interface_0.output.save()


# -- raw-hook helpers (expected values) ----------------------------------------------------------


def hook_free(module: torch.nn.Module) -> bool:
    from nnsight_core.testing import hook_count

    return hook_count(module) == 0


@contextlib.contextmanager
def raw_hooks(root: torch.nn.Module, hooks: dict[str, Callable]):
    """Register plain forward hooks ``{dotted path: fn(module, args, output)}`` for a block."""
    handles = [root.get_submodule(path).register_forward_hook(fn) for path, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def capture(store: dict[str, torch.Tensor], key: str, edit: Callable | None = None) -> Callable:
    """A forward hook that optionally edits a clone of the output, then records it."""

    def hook(module, args, output):
        if edit is not None:
            output = output.clone()
            edit(output)
        store[key] = output.detach().clone()
        return output

    return hook


def left_pad(rows, pad: int):
    """Left-pad a list of (1, n) id tensors into one batch with its attention mask."""
    width = max(r.shape[1] for r in rows)
    ids = torch.cat([torch.nn.functional.pad(r, (width - r.shape[1], 0), value=pad) for r in rows])
    mask = torch.cat([torch.nn.functional.pad(torch.ones_like(r), (width - r.shape[1], 0), value=0)
                      for r in rows])
    return ids, mask


# -- tiny diffusers pipelines --------------------------------------------------------------------


def plain_pipeline(folder):
    """The plain diffusers pipeline, for expected values."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder)


def generators(seed, rows, repeats=1):
    """What DiffusionModel's ``seed=`` means: image k of every prompt seeded with seed + k."""
    return [torch.Generator().manual_seed(seed + k % repeats) for k in range(rows * repeats)]
