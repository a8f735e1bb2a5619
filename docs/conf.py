"""Sphinx configuration for mtlkit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mtlkit

project = "mtlkit"
author = "mtlkit developers"
copyright = "2026, mtlkit developers"
release = mtlkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"mtlkit {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Remote inventories cannot be fetched offline, and a failed fetch is a warning (fatal under -W).
# Opt in with MTLKIT_INTERSPHINX=1 where the network is reachable.
if os.environ.get("MTLKIT_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }
else:
    intersphinx_mapping = {}

# Doctests in the guides share this preamble.
doctest_global_setup = """
import torch
torch.manual_seed(0)
"""
nitpicky = False
