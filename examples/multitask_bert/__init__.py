"""The parts of the reference multi-task BERT pipeline (``examples/bert_sst_qqp_sts.py``).

- :mod:`multitask_bert.data`: CS224N CSV loading, tokenization once per run, dynamic padding and
  length-aware batching.
- :mod:`multitask_bert.model`: the encoder (any Hugging Face BERT-like model) and the task heads.
- :mod:`multitask_bert.train`: the training loop (sequential / interleaved, optional mtlkit
  primitives).
- :mod:`multitask_bert.evaluate`: metrics (accuracy, Pearson, the paper's Eq. 7) and prediction.
- :mod:`multitask_bert.report`: metrics.json, prediction CSVs, plots, errors.md.
- :mod:`multitask_bert.presets`: the rows of the paper's Table 1 as sets of flags.
- :mod:`multitask_bert.checkpoint`: atomic safetensors + JSON checkpoints.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("sst", "qqp", "sts")
