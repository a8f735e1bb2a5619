"""``--pair-feature cosine``: the pretrained bi-encoder's similarity as a feature of the pair heads.

The default model, all-MiniLM-L6-v2, was trained as a sentence encoder: the cosine of two
sentences' mean-pooled embeddings already scores STS-B pairs (dev Pearson 0.84) and separates
Quora duplicates (dev accuracy 0.78) before any fine-tuning. The cross-encoder sees both
sentences at once and learns more, but its mistakes are not the bi-encoder's, so the QQP and STS
heads get that cosine as one more input. It comes from a frozen copy of the pretrained encoder,
computed once per split before training; the fine-tuned encoder is not run twice per step.

The feature weight of each head starts from a one-feature fit on the training set (least
squares for STS, logistic regression for QQP): a weight learned from a random start at a
fine-tuning learning rate would move too little in a few thousand steps to matter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import PAIR_TASKS, TaskSplit, TokenizedTask
from .model import MultiTaskBert, _hidden_states, load_backbone

logger = logging.getLogger(__name__)

PAIR_FEATURES = ("none", "cosine")


@torch.no_grad()
def sentence_embeddings(encoder: nn.Module, tokenizer: Any, sentences: Sequence[str],
                        batch_size: int = 128, max_length: int = 128,
                        device: torch.device | str = "cpu", bf16: bool = False) -> torch.Tensor:
    r"""Unit-length masked-mean embeddings ``(len(sentences), hidden)`` in float32.

    Each distinct sentence is encoded once, in length-sorted batches (little padding).

    >>> import tempfile
    >>> from transformers import BertConfig, BertModel, BertTokenizerFast
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    >>> tok = BertTokenizerFast(vocab_file=f.name)
    >>> enc = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    >>> e = sentence_embeddings(enc, tok, ["a b", "b", "a b"])
    >>> e.shape, bool(torch.equal(e[0], e[2])), round(float(e[1].norm()), 4)
    (torch.Size([3, 8]), True, 1.0)
    """
    device = torch.device(device)
    distinct = sorted(set(sentences), key=len)
    rows = torch.empty(0, getattr(getattr(encoder, "config", None), "hidden_size", 0))
    was_training = encoder.training
    encoder.eval()
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
           else contextlib.nullcontext())
    chunks = []
    try:
        with ctx:
            for start in range(0, len(distinct), batch_size):
                enc = tokenizer(distinct[start:start + batch_size], padding=True,
                                truncation=True, max_length=max_length, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                hidden = _hidden_states(encoder(**enc)).float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                chunks.append(F.normalize(mean, dim=-1).cpu())
    finally:
        encoder.train(was_training)
    if chunks:
        rows = torch.cat(chunks)
    position = {s: i for i, s in enumerate(distinct)}
    return rows[[position[s] for s in sentences]] if sentences else rows


def pair_cosines(encoder: nn.Module, tokenizer: Any, split: TaskSplit, **kwargs: Any
                 ) -> torch.Tensor:
    """The cosine similarity of each row's two sentences, ``(len(split),)`` float32.

    ``kwargs`` go to :func:`sentence_embeddings`. Symmetric in the two sentences, so one value
    serves both orders of a pair (``--pair-swap``, ``--symmetric-eval``).

    Raises:
        ValueError: ``split`` is not a pair task.
    """
    if split.sent2 is None:
        raise ValueError(f"{split.task} {split.split}: the cosine feature needs sentence pairs")
    emb = sentence_embeddings(encoder, tokenizer, split.sent1 + split.sent2, **kwargs)
    n = len(split)
    return (emb[:n] * emb[n:]).sum(-1)


def fit_feature(task: str, feature: torch.Tensor, labels: torch.Tensor,
                iterations: int = 50) -> tuple[float, float]:
    """``(weight, intercept)`` of the one-feature predictor of ``task`` fitted on a training set.

    STS: least squares of the 0-5 score on the feature. QQP: logistic regression of the 0/1
    label (maximum likelihood, by Newton's method with a tiny ridge so that separable data
    stay finite).

    >>> x = torch.tensor([0.0, 1.0, 2.0])
    >>> [round(v, 4) for v in fit_feature("sts", x, 2 * x + 1)]
    [2.0, 1.0]

    Raises:
        ValueError: an unknown task, lengths that differ, or fewer than two rows.
    """
    if task not in ("qqp", "sts"):
        raise ValueError(f"fit_feature: task must be 'qqp' or 'sts', got {task!r}")
    x, y = feature.double().flatten(), labels.double().flatten()
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"fit_feature: need as many labels as features (at least 2), got "
                         f"{x.numel()} features and {y.numel()} labels")
    design = torch.stack([x, torch.ones_like(x)], 1)
    if task == "sts":
        coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
        return float(coef[0]), float(coef[1])
    coef = torch.zeros(2, dtype=torch.float64)
    ridge = 1e-6 * x.numel() * torch.eye(2, dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(design @ coef)
        grad = design.T @ (p - y) + ridge @ coef
        hess = design.T @ (design * (p * (1 - p)).unsqueeze(1)) + ridge
        step = torch.linalg.solve(hess, grad)
        coef = coef - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(coef[0]), float(coef[1])


class CosineFeatures:
    """The frozen pretrained encoder that computes ``--pair-feature cosine`` for each split.

    It is loaded fresh from ``model_name`` (never the model being trained, which a resumed run
    has already changed), used for every split, and dropped by :meth:`close`.

    Args:
        model_name: the Hugging Face name or directory of the pretrained encoder.
        device: where to run it.
        bf16: bfloat16 autocast (the cosines themselves are float32).
        max_length: token truncation, as for training.
    """

    def __init__(self, model_name: str, device: torch.device, bf16: bool = False,
                 max_length: int = 128) -> None:
        self.encoder: nn.Module | None
        self.encoder, self.tokenizer = load_backbone(model_name)
        self.encoder.to(device)
        self.device, self.bf16, self.max_length = device, bf16, max_length

    def attach(self, ds: TokenizedTask) -> None:
        """Compute the cosines of ``ds``'s pairs and attach them to it (``set_features``)."""
        if self.encoder is None:
            raise RuntimeError("CosineFeatures.attach after close()")
        values = pair_cosines(self.encoder, self.tokenizer, ds.split, device=self.device,
                              bf16=self.bf16, max_length=self.max_length)
        ds.set_features(values.tolist())
        logger.info("%s %s: pair cosine mean %.3f over %d rows", ds.task, ds.split.split,
                    float(values.mean()), len(values))

    def close(self) -> None:
        """Free the frozen encoder."""
        self.encoder = None


def fit_feature_heads(model: MultiTaskBert, train_sets: dict[str, TokenizedTask]
                      ) -> dict[str, tuple[float, float]]:
    """Start each pair head's feature weight and bias at the fit of :func:`fit_feature` on its
    training set (with features attached). Returns ``{task: (weight, intercept)}``.

    Raises:
        ValueError: the model has no feature heads, or a training set has no features.
    """
    if not model.pair_feature:
        raise ValueError("fit_feature_heads: the model was built without pair_feature=True")
    fits = {}
    for task, ds in train_sets.items():
        if task not in PAIR_TASKS:
            continue
        if ds.features is None or ds.split.labels is None:
            raise ValueError(f"{task}: the training set needs labels and attached features")
        fits[task] = fit_feature(task, torch.tensor(ds.features), torch.tensor(ds.split.labels))
        model.heads[task].set_feature_fit(*fits[task])
        logger.info("%s head starts from %.3f * cosine %+.3f", task, *fits[task])
    return fits
