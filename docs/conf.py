"""Sphinx configuration for the nnsight_core documentation.

Build with ``make docs`` (``python -m sphinx -W -b html docs docs/_build/html``):
every warning fails the build. No extension reaches the network.
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
nitpicky = False

# -- autodoc / napoleon -------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Render "Attributes:" sections as fields, so that an attribute listed there and
# also documented by autodoc (a property, a slot) is not described twice.
napoleon_use_ivar = True

# -- HTML --------------------------------------------------------------------------

html_theme = "furo"
html_title = f"nnsight_core {release}"
