"""nnsight_transformers: the nnsight_core adapter for Hugging Face causal language models."""

from __future__ import annotations

from .checkpoints import gguf_checkpoint, smollm2_checkpoint
from .model import Generator, LanguageModel
from .proxy import LanguageModelProxy, TokenIndexer

__version__ = "0.1.0"

__all__ = ["Generator", "LanguageModel", "LanguageModelProxy", "TokenIndexer", "gguf_checkpoint",
           "smollm2_checkpoint"]
