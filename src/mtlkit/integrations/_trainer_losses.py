"""One task's loss from the model: the call, the checks on what comes back, the SMART term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit import SmartLoss, hf_smart_inputs


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {sorted(output)}"
    return type(output).__name__


def loss_of(output: Any, where: str) -> Tensor:
    """The scalar loss in ``output`` (a tensor, a mapping with ``"loss"``, or ``.loss``).

    Raises:
        ValueError: there is none, or it is not a floating-point scalar.
    """
    if isinstance(output, Tensor):
        loss = output
    elif isinstance(output, Mapping):
        loss = output.get("loss")
    else:
        loss = getattr(output, "loss", None)
    if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.is_floating_point():
        got = _describe(output) if loss is None else f"loss {loss!r}"
        raise ValueError(
            f"{where}: expected a scalar loss tensor, or outputs with a scalar .loss, got {got} "
            "(does the batch carry the labels the model needs?)"
        )
    return loss


def logits_of(output: Any, where: str) -> Tensor:
    """``output.logits`` (or ``output["logits"]``), for SMART's divergence."""
    if isinstance(output, Mapping):
        logits = output.get("logits")
    else:
        logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"{where}: SMART needs the task output: expected outputs with .logits, got "
            f"{_describe(output)}"
        )
    return logits


def call_model(model: nn.Module, task: Any, batch: Mapping[str, Any], where: str) -> Any:
    """``model(task=task, **batch)``; a KeyError on the task name says which task failed."""
    try:
        return model(task=task, **batch)
    except KeyError as exc:
        if isinstance(task, str) and exc.args and exc.args[0] == task:
            raise ValueError(
                f"{where}: the model cannot compute task {task!r} (it raised KeyError({task!r})); "
                "is it one of the model's tasks?"
            ) from exc
        raise


def check_labels(task: str, batch: Mapping[str, Any], label_names: list[str]) -> None:
    """ValueError unless ``batch`` carries every one of ``label_names``."""
    missing = [n for n in label_names if batch.get(n) is None]
    if missing:
        raise ValueError(
            f"train_dataset[{task!r}]: expected batches with labels {label_names}, got a batch "
            f"with keys {sorted(batch)} (does the task's collator keep the labels?)"
        )


class _SmartEncoder(nn.Module):
    """What :func:`hf_smart_inputs` needs of an encoder, over the (possibly DDP-wrapped) model.

    The word embeddings come from the unwrapped model; every forward goes through ``model`` so a
    DDP wrapper sees it. ``model`` is held outside the module registry (not a submodule).
    """

    def __init__(self, model: nn.Module, unwrapped: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_unwrapped", unwrapped)

    def get_input_embeddings(self) -> nn.Module:
        return self._unwrapped.get_input_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        return self._model(**kwargs)


def smart_task_loss(
    model: nn.Module,
    unwrapped: nn.Module,
    task: str,
    batch: Mapping[str, Any],
    smart: SmartLoss,
    label_names: list[str],
) -> tuple[Tensor, Tensor]:
    """``(task loss, SMART term)`` with the clean pass through ``inputs_embeds``.

    The clean output is computed from the word embeddings, as the perturbed ones are (one path,
    see :func:`mtlkit.hf_smart_inputs`): ``model(task=..., inputs_embeds=..., **rest)``.
    """
    where = f"model(task={task!r})"
    if "input_ids" not in batch:
        raise ValueError(
            f"smart[{task!r}]: expected batches with input_ids, got keys {sorted(batch)}"
        )
    if not callable(getattr(unwrapped, "get_input_embeddings", None)):
        raise ValueError(
            f"smart[{task!r}]: expected a model with get_input_embeddings() and an inputs_embeds "
            f"argument, got {type(unwrapped).__name__}"
        )
    inputs = dict(batch)
    input_ids = inputs.pop("input_ids")
    mask = inputs.pop("attention_mask", None)
    labels = {n: inputs.pop(n) for n in label_names if n in inputs}
    encoder = _SmartEncoder(model, unwrapped)
    embeddings, forward_fn = hf_smart_inputs(
        encoder, lambda out: logits_of(out, where), input_ids, mask, task=task, **inputs
    )
    clean_kwargs = dict(inputs, **labels)
    if mask is not None:
        clean_kwargs["attention_mask"] = mask
    output = call_model(model, task, {"inputs_embeds": embeddings, **clean_kwargs}, where)
    loss = loss_of(output, where)
    term = smart(forward_fn, embeddings, logits_of(output, where), attention_mask=mask)
    return loss, term


def stack_losses(losses: Mapping[str, Tensor], tasks: list[str]) -> Tensor:
    """The ``(T,)`` losses in ``tasks`` order, in float32 (for a loss weighting)."""
    return torch.stack([losses[t].float() for t in tasks])
