"""The parts of the reference multi-task BERT pipeline (``examples/bert_sst_qqp_sts.py``),
built from mtlkit's primitives.

- :mod:`multitask_bert.config`: :class:`~multitask_bert.config.RunConfig`, the one source of
  every flag (its checks in :mod:`multitask_bert.config_checks`, the command line built from
  it in :mod:`multitask_bert.flags`).
- :mod:`multitask_bert.presets`: the rows of the paper's Table 1 and the named recipes
  (``best``), as values of the config.
- :mod:`multitask_bert.data`: CS224N CSV loading, tokenization once per run, dynamic padding.
- :mod:`multitask_bert.batching`: length-grouped per-task DataLoaders drawn by
  ``mtlkit.MultiTaskLoader`` (every schedule).
- :mod:`multitask_bert.model`: the encoder (any Hugging Face BERT-like model) and the task heads.
- :mod:`multitask_bert.primitives`: ``mtlkit.PCGrad`` / ``MultiTaskOptimizer``,
  ``mtlkit.SmartLoss``, ``mtlkit.LoRAMoE``; :mod:`multitask_bert.contrastive`: the SimCSE stage
  (``mtlkit.SimCSELoss``, ``mtlkit.mine_pairs``).
- :mod:`multitask_bert.train`: the training loop; :mod:`multitask_bert.run_state`: what the
  last checkpoint keeps; :mod:`multitask_bert.selection`: which weights are kept as best.
- :mod:`multitask_bert.precision`: ``--precision auto|fp32|bf16``.
- :mod:`multitask_bert.evaluate`: metrics (accuracy, Pearson, the paper's Eq. 7) and prediction.
- :mod:`multitask_bert.report`, :mod:`multitask_bert.final`: metrics.json, prediction CSVs,
  plots, errors.md.
- :mod:`multitask_bert.checkpoint`: crash-safe safetensors + JSON checkpoints (fsync, manifest
  with sizes and SHA-256, the previous checkpoint kept as a fall-back).
- :mod:`multitask_bert.distributed`: torchrun: process group, sharded batches, averaged
  gradients, gathered evaluation; :mod:`multitask_bert.rng`: per-rank RNG state in checkpoints.
- :mod:`multitask_bert.layer_decay`: per-layer learning rates;
  :mod:`multitask_bert.weight_average`: the weight average (``--ema``, torch's AveragedModel);
  :mod:`multitask_bert.optim`: the fused AdamW.
- :mod:`multitask_bert.pair_features`: ``--pair-feature cosine``.
- :mod:`multitask_bert.ensemble`: ensembles (the ``best`` recipe, ``examples/ensemble.py``).
- :mod:`multitask_bert.pipeline`: one run from a config.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("sst", "qqp", "sts")
