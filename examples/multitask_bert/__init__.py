"""The parts of the reference multi-task BERT pipeline (``examples/bert_sst_qqp_sts.py``).

- :mod:`multitask_bert.data`: CS224N CSV loading, tokenization once per run, dynamic padding.
- :mod:`multitask_bert.batching`: length-aware batching and resumable per-task streams.
- :mod:`multitask_bert.model`: the encoder (any Hugging Face BERT-like model) and the task heads.
- :mod:`multitask_bert.train`: the training loop (sequential / interleaved, optional mtlkit
  primitives).
- :mod:`multitask_bert.evaluate`: metrics (accuracy, Pearson, the paper's Eq. 7) and prediction.
- :mod:`multitask_bert.report`: metrics.json, prediction CSVs, plots, errors.md.
- :mod:`multitask_bert.presets`: the rows of the paper's Table 1 as sets of flags.
- :mod:`multitask_bert.checkpoint`: crash-safe safetensors + JSON checkpoints (fsync, manifest
  with sizes and SHA-256, the previous checkpoint kept as a fall-back).
- :mod:`multitask_bert.distributed`: torchrun: process group, sharded batches, averaged
  gradients, gathered evaluation.
- :mod:`multitask_bert.rng`: per-rank RNG state in checkpoints.
- :mod:`multitask_bert.train_config`: the training loop's configuration and run state.
- :mod:`multitask_bert.layer_decay`: per-layer learning rates.
- :mod:`multitask_bert.weight_average`: the weight average (``--ema``).
- :mod:`multitask_bert.selection`: which weights are kept as ``best`` (overall or per task).
- :mod:`multitask_bert.primitives`: the wiring of the mtlkit primitives (lazy imports).
- :mod:`multitask_bert.pipeline`: one run from parsed flags.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("sst", "qqp", "sts")
