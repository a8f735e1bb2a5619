"""Build SMART's ``forward_fn`` and word embeddings from a Hugging Face encoder plus a head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def hf_smart_inputs(
    encoder: nn.Module,
    head: Callable[[Any], Tensor],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    **encoder_kwargs: Any,
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Word embeddings and a matching ``forward_fn`` for :class:`SmartLoss`, from a HF encoder.

    The embeddings are the output of ``encoder.get_input_embeddings()`` (what ``inputs_embeds``
    means: before position and token-type embeddings and the embedding LayerNorm), and
    ``forward_fn(e)`` is ``head(encoder(inputs_embeds=e, attention_mask=..., **encoder_kwargs))``.
    Feeding the full embedding output back through ``inputs_embeds`` instead (as mt-dnn does)
    adds the position and token-type embeddings twice; this helper avoids that.

    For RoBERTa-style encoders, whose position ids skip padding and cannot be inferred from
    ``inputs_embeds``, the position ids are computed from ``input_ids`` once and passed along,
    unless you pass ``position_ids`` yourself.

    Compute the clean output with the returned ``forward_fn`` too, so the clean and perturbed
    passes take the same path: ``logits = forward_fn(embeddings)``.

    Args:
        encoder: a transformers encoder (``BertModel``, ``RobertaModel``, ...) that accepts
            ``inputs_embeds``.
        head: maps the encoder's output object to the task output, e.g.
            ``lambda out: classifier(out.pooler_output)``.
        input_ids: token ids ``(batch, tokens)``.
        attention_mask: optional ``(batch, tokens)`` mask, passed to the encoder.
        **encoder_kwargs: more keyword arguments for the encoder (``token_type_ids``, ...).

    Returns:
        ``(embeddings, forward_fn)``. ``embeddings`` stays connected to the embedding weights.

    Example:
        >>> import torch
        >>> from mtlkit import hf_smart_inputs
        >>> from transformers import BertConfig, BertModel
        >>> from mtlkit import SmartLoss
        >>> _ = torch.manual_seed(0)
        >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
        ...                  num_attention_heads=2, intermediate_size=64)
        >>> bert, clf = BertModel(cfg).eval(), torch.nn.Linear(32, 5)
        >>> ids = torch.randint(1, 50, (2, 7))
        >>> mask = torch.ones_like(ids)
        >>> emb, fwd = hf_smart_inputs(bert, lambda out: clf(out.pooler_output), ids, mask)
        >>> logits = fwd(emb)
        >>> direct = clf(bert(input_ids=ids, attention_mask=mask).pooler_output)
        >>> torch.allclose(logits, direct, atol=1e-6)
        True
        >>> reg = SmartLoss()(fwd, emb, logits, attention_mask=mask)
        >>> bool(torch.isfinite(reg))
        True
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder: expected a torch.nn.Module, got {type(encoder).__name__}")
    if not callable(head):
        raise TypeError(f"head: expected a callable, got {type(head).__name__}")
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.long, torch.int):
        got = input_ids.dtype if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids: expected an integer torch.Tensor of token ids, got {got}")
    if "inputs_embeds" in encoder_kwargs or "input_ids" in encoder_kwargs:
        raise ValueError(
            "encoder_kwargs: expected no inputs_embeds or input_ids (pass input_ids positionally; "
            f"this helper builds inputs_embeds), got {sorted(encoder_kwargs)}"
        )
    get_embeddings = getattr(encoder, "get_input_embeddings", None)
    if get_embeddings is None:
        raise TypeError(
            "encoder: expected a model with get_input_embeddings() (a transformers "
            f"PreTrainedModel), got {type(encoder).__name__}"
        )
    kwargs = dict(encoder_kwargs)
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    word_embeddings = get_embeddings()
    emb_module = _embeddings_owning(encoder, word_embeddings)
    make_positions = getattr(emb_module, "create_position_ids_from_input_ids", None)
    if "position_ids" not in kwargs and make_positions is not None:
        kwargs["position_ids"] = make_positions(input_ids, emb_module.padding_idx)
    embeddings = word_embeddings(input_ids)

    def forward_fn(inputs_embeds: Tensor) -> Tensor:
        return head(encoder(inputs_embeds=inputs_embeds, **kwargs))

    return embeddings, forward_fn


def _embeddings_owning(encoder: nn.Module, word_embeddings: nn.Module) -> nn.Module | None:
    """The embedding block holding ``word_embeddings``, wherever a wrapper keeps it
    (``model.embeddings``, ``model.roberta.embeddings``, a peft or LoRAMoE wrapper's base)."""
    for module in encoder.modules():
        if any(child is word_embeddings for child in module.children()):
            return module
    return None
