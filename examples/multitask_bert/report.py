"""Outputs other tools read: metrics.json, predictions/*.csv, plots (PNG) and errors.md.

Plots follow the paper's Figures 1-2: the SST confusion matrix and distance-from-true
histogram, a 5-bucket STS confusion matrix, and the QQP false positive / negative rates.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import TaskSplit
from .evaluate import Predictions

logger = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    # mkstemp creates the file private (0600); give it the permissions open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_predictions(path: Path, preds: Predictions) -> None:
    """``id,prediction`` for every row (SST class 0-4, QQP 0/1, STS a score)."""
    lines = ["id,prediction"]
    for i, p in zip(preds.ids, preds.pred, strict=True):
        lines.append(f"{i},{p:.4f}" if preds.task == "sts" else f"{i},{int(p)}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], n: int) -> list[list[int]]:
    """``m[true][pred]`` counts.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2)
    [[1, 0], [1, 1]]
    """
    m = [[0] * n for _ in range(n)]
    for g, p in zip(gold, pred, strict=True):
        m[int(g)][int(p)] += 1
    return m


def sts_bucket(score: float) -> int:
    """STS score in [0, 5] -> bucket 0-4 ([0,1), [1,2), [2,3), [3,4), [4,5]).

    >>> [sts_bucket(x) for x in (0.0, 0.99, 1.0, 4.2, 5.0)]
    [0, 0, 1, 4, 4]
    """
    return min(4, max(0, int(score)))


def qqp_rates(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """False positive rate FP/(FP+TN) and false negative rate FN/(FN+TP).

    >>> qqp_rates([0, 0, 1, 1], [1, 0, 0, 1])
    {'false_positive_rate': 0.5, 'false_negative_rate': 0.5}
    """
    fp = sum(1 for g, p in zip(gold, pred, strict=True) if g == 0 and p == 1)
    tn = sum(1 for g, p in zip(gold, pred, strict=True) if g == 0 and p == 0)
    fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == 1 and p == 0)
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == 1 and p == 1)
    return {"false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
            "false_negative_rate": fn / (fn + tp) if fn + tp else 0.0}


def _matrix_plot(path: Path, m: list[list[int]], labels: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(m, cmap="Blues")
    for r, row in enumerate(m):
        for c, v in enumerate(row):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(out: Path, dev: dict[str, Predictions]) -> list[Path]:
    """The PNG plots for the dev predictions of the tasks present; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "sst" in dev and dev["sst"].gold is not None:
        p = dev["sst"]
        gold, pred = [int(g) for g in p.gold], [int(x) for x in p.pred]  # type: ignore[union-attr]
        _matrix_plot(out / "sst_confusion.png", confusion_matrix(gold, pred, 5),
                     [str(i) for i in range(5)], "SST dev: confusion matrix")
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        dist = [abs(a - b) for a, b in zip(gold, pred, strict=True)]
        ax.bar(range(5), [dist.count(d) for d in range(5)])
        ax.set_xlabel("|predicted - true| class distance")
        ax.set_ylabel("dev examples")
        ax.set_title("SST dev: distance from the true class")
        fig.tight_layout()
        fig.savefig(out / "sst_distance.png", dpi=110)
        plt.close(fig)
        written += [out / "sst_confusion.png", out / "sst_distance.png"]
    if "sts" in dev and dev["sts"].gold is not None:
        p = dev["sts"]
        m = confusion_matrix([sts_bucket(g) for g in p.gold],  # type: ignore[union-attr]
                             [sts_bucket(x) for x in p.pred], 5)
        _matrix_plot(out / "sts_confusion.png", m, ["0-1", "1-2", "2-3", "3-4", "4-5"],
                     "STS dev: 5-bucket confusion matrix")
        written.append(out / "sts_confusion.png")
    if "qqp" in dev and dev["qqp"].gold is not None:
        rates = qqp_rates(dev["qqp"].gold, dev["qqp"].pred)  # type: ignore[arg-type]
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        ax.bar(["false positive", "false negative"], list(rates.values()),
               color=["tab:orange", "tab:blue"])
        for i, v in enumerate(rates.values()):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom")
        ax.set_ylabel("rate")
        ax.set_title("QQP dev: error rates")
        fig.tight_layout()
        fig.savefig(out / "qqp_rates.png", dpi=110)
        plt.close(fig)
        written.append(out / "qqp_rates.png")
    return written


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def errors_markdown(dev: dict[str, Predictions], splits: dict[str, TaskSplit], k: int = 10) -> str:
    """The ``k`` most confident dev mistakes per task (STS: the largest absolute errors)."""
    lines = ["# Most confident mistakes on dev", ""]
    for task, p in dev.items():
        if p.gold is None:
            continue
        sp = splits[task]

        def text(i: int, sp: TaskSplit = sp) -> str:
            if sp.sent2 is None:
                return _cell(sp.sent1[i])
            return f"{_cell(sp.sent1[i])} / {_cell(sp.sent2[i])}"

        if task == "sts":
            rows = sorted(range(len(p.pred)), key=lambda i: -abs(p.pred[i] - p.gold[i]))[:k]
            lines += ["## STS (largest absolute errors)", "",
                      "| sentences | true | predicted | abs error |", "|---|---|---|---|"]
            lines += [f"| {text(i)} | {p.gold[i]:.2f} | {p.pred[i]:.2f} | "
                      f"{abs(p.pred[i] - p.gold[i]):.2f} |" for i in rows]
        else:
            wrong = [i for i in range(len(p.pred)) if p.pred[i] != p.gold[i]]
            rows = sorted(wrong, key=lambda i: -p.confidence[i])[:k]
            lines += [f"## {task.upper()} ({len(wrong)} of {len(p.pred)} wrong)", "",
                      "| text | true | predicted | confidence |", "|---|---|---|---|"]
            lines += [f"| {text(i)} | {int(p.gold[i])} | {int(p.pred[i])} | "
                      f"{p.confidence[i]:.3f} |" for i in rows]
        lines.append("")
    return "\n".join(lines)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json`` (atomic)."""
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")


def read_predictions(path: Path) -> list[tuple[str, str]]:
    """Rows of a predictions CSV (for checks and tests)."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != ["id", "prediction"]:
            raise ValueError(f"{path}: header {header!r}, expected id,prediction")
        return [(r[0], r[1]) for r in reader]
