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
from typing import Optional

__all__ = ["tiny_llama_checkpoint"]

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
