"""Integrations with training frameworks, each imported only when used.

``mtlkit.integrations.transformers.MultiTaskTrainer``: multi-task training inside
``transformers.Trainer``. Importing ``mtlkit`` or this package does not import transformers.
"""

__all__: list[str] = []
