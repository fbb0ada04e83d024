"""Sphinx configuration for the nnsight_core documentation.

Build with ``make docs`` (``python -m sphinx -W -n -E -b html docs docs/_build/html``):
every warning fails the build, and ``nitpicky`` makes every reference that does
not resolve a warning. No extension reaches the network (no intersphinx).
"""

from __future__ import annotations

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(DOCS, "_ext"))

project = "nnsight_core"
author = "nnsight_core contributors"
copyright = "nnsight_core contributors"

try:
    import nnsight_core

    release = version = nnsight_core.__version__
except ImportError:  # pragma: no cover - the build installs the package first
    release = version = "unknown"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "nnsight_docs",  # docs/_ext/nnsight_docs.py: the OPS table and example outputs
]

exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
nitpicky = True
# Targets that cannot resolve without intersphinx (which would need the network): the
# standard library, torch, pluggy and the frameworks, as the type annotations name them.
nitpick_ignore = [
    ("py:class", name) for name in (
        "os.PathLike", "pathlib.Path", "collections.abc.Mapping",
        "torch.Tensor", "torch.device", "torch.dtype", "torch.Size", "torch.nn.Module",
        "torch.nn.modules.module.Module",
        "pluggy._manager.PluginManager", "pluggy.PluginManager",
        "transformers.tokenization_utils_base.PreTrainedTokenizerBase",
        "diffusers.pipelines.pipeline_utils.DiffusionPipeline",
    )
] + [("py:func", "json.dumps")]
# Type aliases and private classes that annotations name: autodoc documents neither.
nitpick_ignore += [
    ("py:class", "Modules"),                          # nnsight_core.cache.Modules, a typing alias
    ("py:class", "nnsight_core.tracer._IterIndexer"),  # the type of Runner.iter
    ("py:class", "nnsight_core.tracer._IterBlock"),    # what Runner.iter[...] returns
    ("py:class", "nnsight_core.tracer._CondBlock"),    # what Runner.cond returns
    ("py:class", "nnsight_core.envoy._CallIndexer"),   # the type of Envoy.iter
]

# -- autodoc / napoleon -------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Defaults as written in the source (``automodel=AutoModelForCausalLM``), not their repr
# (``<class '...'>``), which the signature parser cannot read.
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Render "Attributes:" sections as fields, so that an attribute listed there and
# also documented by autodoc (a property, a slot) is not described twice.
napoleon_use_ivar = True

# -- HTML --------------------------------------------------------------------------

html_theme = "furo"
html_title = f"nnsight_core {release}"
