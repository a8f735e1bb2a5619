"""The parts of the reference multi-task BERT pipeline (``examples/bert_sst_qqp_sts.py``).

- :mod:`multitask_bert.data`: CS224N CSV loading, tokenization once per run, dynamic padding.
- :mod:`multitask_bert.batching`: length-aware batching and resumable per-task streams.
- :mod:`multitask_bert.model`: the encoder (any Hugging Face BERT-like model) and the task heads.
- :mod:`multitask_bert.train`: the training loop (sequential / interleaved, optional mtlkit
  primitives).
- :mod:`multitask_bert.evaluate`: metrics (accuracy, Pearson, the paper's Eq. 7) and prediction.
- :mod:`multitask_bert.report`: metrics.json, prediction CSVs, plots, errors.md.
- :mod:`multitask_bert.presets`: the rows of the paper's Table 1 as sets of flags.
- :mod:`multitask_bert.checkpoint`: atomic safetensors + JSON checkpoints.
- :mod:`multitask_bert.primitives`: the wiring of the mtlkit primitives (lazy imports).
- :mod:`multitask_bert.pipeline`: one run from parsed flags.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("sst", "qqp", "sts")
