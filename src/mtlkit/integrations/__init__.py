"""Integrations with training frameworks, each imported only when used.

``mtlkit.integrations.transformers.MultiTaskTrainer``: multi-task training inside
``transformers.Trainer``. Importing ``mtlkit`` or this package does not import transformers.

:func:`resolve_pretrained` (also in ``mtlkit.integrations.transformers``): where
``from_pretrained`` should load a model name from, packaged offline copies included.
"""

from mtlkit.integrations._pretrained import resolve_pretrained

__all__ = ["resolve_pretrained"]
