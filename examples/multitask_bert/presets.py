"""The rows of the paper's Table 1 and the named recipes, as values of
:class:`~multitask_bert.config.RunConfig`, and the paper's numbers beside them.

A preset only sets defaults: any flag given on the command line wins over it. ``best`` is the
best recipe measured on the embedded MiniLM (the split ensemble of runs M and N of the
reproduction guide): two Quora + STS-B models and three SST-5 models, each trained for two
epochs, their outputs averaged per task. It is defined by its work (epochs), so the same
command trains the same models on every machine; ``--max-train-minutes`` caps it if asked
(70% of the cap for the pair models, 30% for the SST-5 models).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import MemberGroup, RunConfig


def _row(name: str, **values: Any) -> RunConfig:
    return RunConfig(preset=name, **values)


_CE_INTERLEAVED: dict[str, Any] = {"encoding": "cross", "schedule": "interleaved"}

PRESETS: dict[str, RunConfig] = {
    "baseline": _row("baseline", encoding="separate", schedule="sequential"),
    "ce": _row("ce", encoding="cross", schedule="sequential"),
    "ce-interleaved": _row("ce-interleaved", **_CE_INTERLEAVED),
    "ce-interleaved-surgery": _row("ce-interleaved-surgery", **_CE_INTERLEAVED,
                                   weighting="pcgrad"),
    "ce-interleaved-smart": _row("ce-interleaved-smart", **_CE_INTERLEAVED, smart_weight=1.0),
    "ce-interleaved-contrastive": _row("ce-interleaved-contrastive", **_CE_INTERLEAVED,
                                       contrastive=True),
    "ce-interleaved-clip": _row("ce-interleaved-clip", **_CE_INTERLEAVED, clip_norm=1.0),
    "ce-interleaved-clip-contrastive": _row("ce-interleaved-clip-contrastive",
                                            **_CE_INTERLEAVED, clip_norm=1.0, contrastive=True),
    "ce-mixture-clip": _row("ce-mixture-clip", **_CE_INTERLEAVED, clip_norm=1.0,
                            mixture="full"),
    "ce-mixture-lora-clip": _row("ce-mixture-lora-clip", **_CE_INTERLEAVED, clip_norm=1.0,
                                 mixture="lora"),
}
"""Table 1, one :class:`RunConfig` per row."""

RECIPES: dict[str, RunConfig] = {
    "best": dataclasses.replace(
        PRESETS["ce-mixture-clip"], preset="best", pad_multiple=8, pooling="mean", lr=8e-5,
        lr_schedule="linear", epochs=2, ema=0.999, dropout=0.1, select="per-task",
        pair_swap=True, symmetric_eval=True, batch_order="shuffled", out="runs/best",
        ensemble=(MemberGroup(2, {"tasks": ("qqp", "sts")}, 0.7),
                  MemberGroup(3, {"tasks": ("sst",)}, 0.3))),
}
"""Named recipes: the best one measured, as one command (``--preset best``)."""

ALL_PRESETS: dict[str, RunConfig] = {**PRESETS, **RECIPES}

# Table 1 of the paper (BERT-base, dev): SA acc, PD acc, STS corr, overall.
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "baseline": (0.450, 0.805, 0.374, 0.647),
    "ce": (0.453, 0.889, 0.881, 0.761),
    "ce-interleaved": (0.496, 0.898, 0.878, 0.778),
    "ce-interleaved-surgery": (0.495, 0.894, 0.883, 0.777),
    "ce-interleaved-smart": (0.500, 0.900, 0.883, 0.781),
    "ce-interleaved-contrastive": (0.509, 0.900, 0.883, 0.783),
    "ce-interleaved-clip": (0.518, 0.901, 0.883, 0.787),
    "ce-interleaved-clip-contrastive": (0.521, 0.901, 0.873, 0.786),
    "ce-mixture-clip": (0.515, 0.904, 0.877, 0.786),
    "ce-mixture-lora-clip": (0.499, 0.886, 0.846, 0.769),
}

# The mtlkit primitive each preset exercises beyond the loader (tests check that it acted).
NEEDS: dict[str, tuple[str, ...]] = {
    "ce-interleaved-surgery": ("PCGrad",),
    "ce-interleaved-smart": ("SmartLoss",),
    "ce-interleaved-contrastive": ("SimCSELoss", "mine_pairs"),
    "ce-interleaved-clip-contrastive": ("SimCSELoss", "mine_pairs"),
    "ce-mixture-lora-clip": ("LoRAMoE",),
}


def changed_fields(cfg: RunConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from :class:`RunConfig`'s defaults (``preset`` aside).

    >>> changed_fields(PRESETS["ce-interleaved-clip"])
    {'clip_norm': 1.0}
    """
    default = RunConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name != "preset" and getattr(cfg, f.name) != getattr(default, f.name)}


def describe(name: str) -> str:
    """One line: the flags a preset sets.

    >>> describe("ce-interleaved-clip")
    'ce-interleaved-clip: --clip-norm 1.0'
    >>> describe("best").split(" -- ")[1]
    '2 x --tasks qqp,sts'
    """
    flags, groups = [], []
    for key, value in changed_fields(ALL_PRESETS[name]).items():
        if key == "ensemble":
            groups = [f"{g.members} x " + " ".join(
                f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, tuple) else v}"
                for k, v in g.overrides.items()) for g in value]
            continue
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return f"{name}: {' '.join(flags) or '(the defaults)'}" + "".join(f" -- {g}" for g in groups)
