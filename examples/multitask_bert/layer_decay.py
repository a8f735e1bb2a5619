"""Layer-wise learning-rate decay (``--layer-lr-decay``): lower layers move less.

The lower layers of a pretrained encoder hold general features that fine-tuning on a few
thousand sentences should change least; the usual remedy (ELECTRA, BEiT, many GLUE recipes)
scales the learning rate of layer ``k`` of ``L`` by ``decay ** (L - k)`` and that of the
embeddings by ``decay ** (L + 1)``, the heads keeping the full rate.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.")


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, ``k + 1`` for encoder layer ``k``, ``num_layers + 1`` otherwise.

    >>> [layer_depth(n, 6) for n in ("encoder.embeddings.word_embeddings.weight",
    ...  "encoder.encoder.layer.0.output.dense.weight", "encoder.encoder.layer.5.x",
    ...  "heads.sst.weight")]
    [0, 1, 6, 7]
    """
    if _EMBEDDINGS.search(name):
        return 0
    m = _LAYER.search(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def layerwise_param_groups(model: nn.Module, lr: float, decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable parameters, one per depth.

    Args:
        model: any module whose encoder parameters are named ``...embeddings...`` and
            ``...layer.<k>...`` (Hugging Face BERT-like models, also inside LoRA wrappers
            and per-task encoders).
        lr: the learning rate of the top (heads and anything outside the encoder layers).
        decay: the factor per layer going down, in (0, 1]; 1 gives every group ``lr``.

    Raises:
        ValueError: ``decay`` outside (0, 1], or no parameter named like an encoder layer.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2,
    ...                             num_attention_heads=2, intermediate_size=8))
    >>> groups = layerwise_param_groups(bert, lr=1.0, decay=0.5)
    >>> [(g["depth"], g["lr"]) for g in groups]
    [(0, 0.125), (1, 0.25), (2, 0.5), (3, 1.0)]
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layers = [int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))]
    if not layers:
        raise ValueError("no parameter is named like an encoder layer ('layer.<k>.'); "
                         "layer-wise decay needs a BERT-like encoder")
    num_layers = max(layers) + 1
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, p in named:
        by_depth.setdefault(layer_depth(name, num_layers), []).append(p)
    return [{"params": by_depth[d], "lr": lr * decay ** (num_layers + 1 - d), "depth": d}
            for d in sorted(by_depth)]
