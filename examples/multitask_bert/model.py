"""The encoder (any Hugging Face BERT-like model) and the three task heads.

Two encodings, as in the paper's section 4:

- ``"separate"`` (the baseline): each sentence is encoded on its own; for pair tasks the two
  [CLS] embeddings are concatenated into the linear head.
- ``"cross"``: a pair is encoded as one sequence ``[CLS] s1 [SEP] s2 [SEP]`` and its [CLS]
  embedding goes into the head.

Heads: SST 5-way logits (cross-entropy), QQP one logit (binary cross-entropy), STS one score
(MSE against the 0-5 similarity).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlkit.integrations import resolve_pretrained

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NUM_SST_CLASSES = 5


def resolve_model(name: str) -> str:
    """Where to load ``name`` from: :func:`mtlkit.integrations.resolve_pretrained`."""
    return resolve_pretrained(name)


def load_backbone(name: str, encoder_dropout: float | None = None,
                  report: dict[str, list[str]] | None = None) -> tuple[nn.Module, Any]:
    """Load ``(encoder, tokenizer)`` for ``name`` (see :func:`resolve_model`).

    Hugging Face's own loading messages are left on, so a checkpoint that does not fit the
    architecture ("newly initialized weights") is seen. The encoder is built without BERT's
    pooler (the heads pool themselves), so a checkpoint's ``pooler.*`` weights are expected to
    be unused; any other missing or unexpected key is logged as a warning.

    Args:
        name: a Hugging Face model name or a local directory (config, weights, tokenizer).
        encoder_dropout: if given, overrides the encoder's hidden and attention dropout.
        report: if given, filled with the sorted ``missing`` and ``unexpected`` keys.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(name)
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if encoder_dropout is not None:
        kwargs.update(hidden_dropout_prob=encoder_dropout,
                      attention_probs_dropout_prob=encoder_dropout)
    try:
        try:
            encoder, info = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
        except TypeError:  # architectures without a pooler flag
            encoder, info = AutoModel.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise OSError(f"cannot load model {name!r} (resolved to {path!r}): {exc}. Pass --model "
                      "a local directory or a Hugging Face name reachable offline.") from exc
    missing = sorted(info.get("missing_keys", ()))
    unexpected = sorted(k for k in info.get("unexpected_keys", ())
                        if not k.startswith("pooler."))
    if missing or unexpected:
        logger.warning("%s: %d weights newly initialized (missing from the checkpoint: %s), "
                       "%d unused: %s", name, len(missing), missing[:8], len(unexpected),
                       unexpected[:8])
    if report is not None:
        report.update(missing=missing, unexpected=sorted(info.get("unexpected_keys", ())))
    logger.info("loaded %s from %s (%.1fM parameters)", name, path,
                sum(p.numel() for p in encoder.parameters()) / 1e6)
    return encoder, tokenizer


def _hidden_states(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


class FeatureHead(nn.Module):
    """A pair head with one extra scalar input: ``linear(z) + weight * feature``.

    The feature term is computed in float32 even under bfloat16 autocast (the cosine needs more
    than bfloat16's three significant digits). Its parameters live under the head's name, so
    checkpoints and ``--select per-task`` treat them as the head's.

    Args:
        in_features: the size of the pooled embedding ``z``.

    >>> h = FeatureHead(4)
    >>> h.set_feature_fit(2.0, 0.5)
    >>> with torch.no_grad():
    ...     _ = h.linear.weight.zero_()
    >>> h(torch.ones(3, 4), torch.tensor([0.0, 1.0, 0.25])).tolist()
    [0.5, 2.5, 1.0]
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.feature_weight = nn.Parameter(torch.zeros(1))

    def set_feature_fit(self, weight: float, intercept: float) -> None:
        """Start from the fitted one-feature predictor: its weight, and its intercept as bias."""
        with torch.no_grad():
            self.feature_weight.fill_(weight)
            self.linear.bias.fill_(intercept)

    def forward(self, z: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """``(B,)`` outputs from embeddings ``(B, in_features)`` and features ``(B,)``."""
        if feature.shape != z.shape[:1]:
            raise ValueError(f"pair feature of shape {tuple(feature.shape)} for a batch of "
                             f"{z.shape[0]} rows")
        return self.linear(z).squeeze(-1).float() + self.feature_weight.float() * feature.float()


class MultiTaskBert(nn.Module):
    """A BERT encoder shared by (or, for mixtures, one per) task, plus the task heads.

    Args:
        encoder: a Hugging Face encoder (``BertModel``-like) or an ``mtlkit.LoRAMoE``.
        hidden_size: the encoder's hidden size.
        encoding: ``"cross"`` or ``"separate"`` (the baseline).
        dropout: dropout on the pooled embedding before each head (paper: 0.3).
        pooling: ``"cls"`` (the paper) or ``"mean"`` (masked mean of the last layer).
        task_encoders: for the ``ce-mixture`` presets, one full encoder per task
            (``encoder`` is then unused and may be ``None``).
        routed: True when ``encoder`` is a LoRAMoE called as ``encoder(task=..., ...)``.
        pair_feature: give the QQP and STS heads one extra scalar input per pair, the batch's
            ``pair_feature`` (a :class:`FeatureHead` each; see ``--pair-feature``).

    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                  num_attention_heads=2, intermediate_size=32)
    >>> m = MultiTaskBert(BertModel(cfg), 16, encoding="cross")
    >>> batch = {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3),
    ...          "token_type_ids": torch.zeros(1, 3, dtype=torch.long)}
    >>> m("sst", batch).shape, m("qqp", batch).shape
    (torch.Size([1, 5]), torch.Size([1]))
    """

    def __init__(self, encoder: nn.Module | None, hidden_size: int, encoding: str = "cross",
                 dropout: float = 0.3, pooling: str = "cls",
                 task_encoders: dict[str, nn.Module] | None = None, routed: bool = False,
                 pair_feature: bool = False) -> None:
        super().__init__()
        if encoding not in ("cross", "separate"):
            raise ValueError(f"encoding must be 'cross' or 'separate', got {encoding!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if encoder is None and not task_encoders:
            raise ValueError("pass an encoder or task_encoders")
        self.encoder = encoder
        self.task_encoders = nn.ModuleDict(task_encoders) if task_encoders else None
        self.encoding, self.pooling, self.routed = encoding, pooling, routed
        self.dropout = nn.Dropout(dropout)
        pair_in = hidden_size if encoding == "cross" else 2 * hidden_size
        self.pair_feature = pair_feature

        def pair_head() -> nn.Module:
            return FeatureHead(pair_in) if pair_feature else nn.Linear(pair_in, 1)

        self.heads = nn.ModuleDict({"sst": nn.Linear(hidden_size, NUM_SST_CLASSES),
                                    "qqp": pair_head(), "sts": pair_head()})

    def encoder_for(self, task: str) -> nn.Module:
        """The module that encodes ``task``'s inputs."""
        if self.task_encoders is not None:
            return self.task_encoders[task]
        assert self.encoder is not None
        return self.encoder

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches (for gradient surgery)."""
        if self.task_encoders is not None:
            return []
        assert self.encoder is not None
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def encoder_inputs(self, task: str, batch: dict[str, torch.Tensor],
                       suffix: str = "") -> dict[str, Any]:
        """The encoder's keyword arguments for sequence ``suffix`` of ``batch``, but the ids
        (with a LoRA mixture, the routing ``task`` too)."""
        kwargs: dict[str, Any] = {"attention_mask": batch["attention_mask" + suffix],
                                  "token_type_ids": batch["token_type_ids" + suffix]}
        if self.routed:
            kwargs["task"] = task
        return kwargs

    def pool(self, encoder_output: Any, mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding of an encoder output: [CLS] or the masked mean."""
        hidden = _hidden_states(encoder_output)
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def embed(self, task: str, batch: dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        """The pooled embedding of the sequence ``input_ids{suffix}`` of ``batch``."""
        out = self.encoder_for(task)(input_ids=batch["input_ids" + suffix],
                                     **self.encoder_inputs(task, batch, suffix))
        return self.pool(out, batch["attention_mask" + suffix])

    def head_output(self, task: str, z: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Dropout and ``task``'s head on the pooled embedding(s) ``z``."""
        z = self.dropout(z)
        if task == "sst":
            return self.heads[task](z)
        if self.pair_feature:
            if "pair_feature" not in batch:
                raise ValueError(f"{task}: the model was built with pair_feature=True but the "
                                 "batch has no 'pair_feature' (see TokenizedTask.set_features)")
            return self.heads[task](z, batch["pair_feature"])
        return self.heads[task](z).squeeze(-1)

    def output_of_encoding(self, task: str, encoder_output: Any,
                           batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task output from the encoder's output for the batch's (first) sequence: what
        ``mtlkit.hf_smart_inputs`` needs as its head. Cross encoding only for pairs."""
        if task != "sst" and self.encoding == "separate":
            raise ValueError(f"{task}: separate encoding needs both sentences' encodings")
        return self.head_output(task, self.pool(encoder_output, batch["attention_mask"]), batch)

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Task output: SST logits ``(B, 5)``; QQP logit ``(B,)``; STS score ``(B,)``."""
        if task not in self.heads:
            raise ValueError(f"task: expected one of sst, qqp, sts, got {task!r}")
        z = self.embed(task, batch)
        if task != "sst" and self.encoding == "separate":
            z = torch.cat([z, self.embed(task, batch, suffix="_2")], dim=-1)
        return self.head_output(task, z, batch)


def task_loss(task: str, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (SST), binary cross-entropy on the logit (QQP), MSE (STS).

    >>> task_loss("qqp", torch.zeros(2), torch.tensor([0.0, 1.0])).item() == F.softplus(
    ...     torch.tensor(0.0)).item()
    True
    """
    output = output.float()
    if task == "sst":
        return F.cross_entropy(output, labels)
    if task == "qqp":
        return F.binary_cross_entropy_with_logits(output, labels.float())
    if task == "sts":
        return F.mse_loss(output, labels.float())
    raise ValueError(f"unknown task {task!r}")


def predict(task: str, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, confidence) from a task output.

    SST: argmax class and its softmax probability; QQP: 0/1 and the probability of that
    answer; STS: the score clamped to [0, 5] and ``None``-like zeros (no confidence).
    """
    output = output.float()
    if task == "sst":
        prob = output.softmax(-1)
        conf, pred = prob.max(-1)
        return pred, conf
    if task == "qqp":
        p = output.sigmoid()
        pred = (p > 0.5).long()
        return pred, torch.where(pred == 1, p, 1 - p)
    return output.clamp(0.0, 5.0), torch.zeros_like(output)
