"""A tiny causal language model built offline, for tests and examples of code that uses LanguageModel.

Example:
    >>> from nnsight_transformers import LanguageModel
    >>> from nnsight_transformers.testing import tiny_llama_checkpoint
    >>> model = LanguageModel(tiny_llama_checkpoint())   # no download: built from a config
    >>> len(model.model.layers), model.tokenizer.eos_token
    (2, '<eos>')
"""

from __future__ import annotations

import tempfile
from typing import Any, Optional, Tuple

__all__ = ["tiny_llama_checkpoint", "tiny_checkpoint", "TINY_ARCHITECTURES"]

CORPUS = ("The Eiffel Tower is in the city of Paris.", "The Colosseum is in the city of Rome.",
          "Big Ben is in the city of London.")


def tiny_llama_checkpoint(folder: Optional[str] = None, seed: int = 0) -> str:
    """Save a 2-layer Llama (hidden size 32) and a byte-level BPE tokenizer trained on a
    three-sentence corpus into ``folder`` (a new temporary folder by default) and return it.

    The tokenizer has ``<eos>`` (id 0) and no pad token; weights are random, seeded by ``seed``.
    Load the folder with ``LanguageModel(folder)`` or ``from_pretrained(folder)``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = folder or tempfile.mkdtemp()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(CORPUS),
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


#: Architectures :func:`tiny_checkpoint` builds, by ``config.model_type``.
TINY_ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral", "gemma", "phi", "gpt_neox", "opt")


def tiny_checkpoint(model_type: str, folder: Optional[str] = None, seed: int = 0,
                    automodel: Any = None) -> str:
    """Save a 2-layer model of ``model_type`` (hidden size 32, weights seeded by ``seed``) and
    the byte-level BPE tokenizer of :func:`tiny_llama_checkpoint` into ``folder`` (a new
    temporary folder by default); return it.

    ``model_type`` is one of :data:`TINY_ARCHITECTURES` (a causal LM), ``"t5"`` (for
    ``AutoModelForSeq2SeqLM``) or ``"bert"``; ``automodel`` (default: ``AutoModelForCausalLM``,
    for T5 ``AutoModelForSeq2SeqLM``) is the auto class that builds it, e.g.
    ``AutoModelForSequenceClassification`` (3 labels) or ``AutoModelForMaskedLM``. T5 and
    BERT tokenizers also have ``<pad>`` and ``<mask>`` tokens.

    Example:
        >>> from nnsight_transformers import LanguageModel
        >>> model = LanguageModel(tiny_checkpoint("gpt_neox"))
        >>> type(model._model).__name__, len(model.layers)
        ('GPTNeoXForCausalLM', 2)
    """
    import torch
    import transformers

    folder = folder or tempfile.mkdtemp()
    specials = ("<eos>", "<pad>", "<mask>") if model_type in ("t5", "bert") else ("<eos>",)
    vocab = _tokenizer(folder, specials)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    llama_like = dict(common, intermediate_size=64, num_key_value_heads=2)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2,
                                                n_head=4, eos_token_id=0, bos_token_id=0),
        "llama": lambda: transformers.LlamaConfig(**llama_like),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like),
        "mistral": lambda: transformers.MistralConfig(**llama_like),
        "gemma": lambda: transformers.GemmaConfig(**llama_like, head_dim=8),
        "phi": lambda: transformers.PhiConfig(**common, intermediate_size=64),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**common, intermediate_size=64),
        "opt": lambda: transformers.OPTConfig(**common, ffn_dim=64, word_embed_proj_dim=32),
        "t5": lambda: transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                            num_heads=4, eos_token_id=0, pad_token_id=1,
                                            decoder_start_token_id=1),
        "bert": lambda: transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64,
                                                max_position_embeddings=64, pad_token_id=1, num_labels=3),
    }
    if model_type not in configs:
        raise ValueError(f"tiny_checkpoint builds {', '.join(TINY_ARCHITECTURES)}, t5 and bert, "
                         f"not {model_type!r}.")
    if automodel is None:
        automodel = (transformers.AutoModelForSeq2SeqLM if model_type == "t5"
                     else transformers.AutoModelForCausalLM)
    torch.manual_seed(seed)
    automodel.from_config(configs[model_type]()).save_pretrained(folder)
    return folder


def _tokenizer(folder: str, specials: Tuple[str, ...] = ("<eos>",)) -> int:
    """Train the byte-level BPE tokenizer on :data:`CORPUS`, save it into ``folder``; return its size.

    The first special token is eos; ``<pad>``, ``<mask>``, ``<cls>`` and ``<sep>``, when given,
    become the pad, mask, cls and sep tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(CORPUS),
        trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials), show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    roles = {"<pad>": "pad_token", "<mask>": "mask_token", "<cls>": "cls_token", "<sep>": "sep_token"}
    extra = {roles[t]: t for t in specials[1:] if t in roles}
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=specials[0], **extra).save_pretrained(folder)
    return bpe.get_vocab_size()
