"""LoRAMoE: a task-routed mixture of LoRA experts on peft (paper section 4, Eq. 6).

Each task gets its own LoRA adapter ("expert") on the same frozen base model:
``h = W_0 x + (alpha / r) B_t A_t x`` for the task ``t`` of the sample. peft creates, initializes,
merges and names the experts; the routing is ours (:mod:`mtlkit.lora_moe.layer`), so that

* a batch can mix tasks sample by sample **in training** (peft's ``adapter_names`` is
  inference-only),
* every expert stays trainable at once (peft's ``set_adapter`` freezes the inactive ones),
* :meth:`LoRAMoE.merged` hands back a plain model of the wrapped class with one expert folded in.

Departures from the paper: the paper fine-tunes the whole model ("without parameter freezing");
here the base is frozen unless ``train_base=True``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mtlkit.lora_moe._peft import (
    check_unwrapped,
    find_targets,
    head_parameter_ids,
    inject,
    restore,
    snapshot,
)
from mtlkit.lora_moe.config import LoRAMoEConfig, ParameterCounts, resolve_config
from mtlkit.lora_moe.io import ExpertsIO
from mtlkit.lora_moe.layer import RoutingHook, RoutingState, batch_info, build_route, checkpointing

logger = logging.getLogger(__name__)


class LoRAMoE(ExpertsIO, nn.Module):
    """A mixture of LoRA experts, one per task, on a Hugging Face model (built with peft).

    The wrapped ``model`` is modified in place (peft injects the LoRA layers into it) and kept as
    :attr:`model`. Its base weights are frozen unless ``train_base``; its task heads (the
    parameters outside its ``base_model``, e.g. the ``classifier`` of a
    ``BertForSequenceClassification``) train unless ``train_heads=False``; every expert is
    trainable at once, whatever the routing of the last batch.

    Nothing is changed when the constructor raises: the settings, the model (it must not hold
    adapters already, e.g. from another ``LoRAMoE``) and the target layers are checked before
    peft touches the model, and a failure during the injection restores it.

    Args:
        model: a ``transformers`` model (``BertModel``, ``BertForSequenceClassification``, ...).
        config: every option, as a :class:`~mtlkit.LoRAMoEConfig` (documented there).
        **options: instead of ``config``, the same options by name (``tasks=..., r=...``), from
            which the config is built.

    Raises:
        ValueError: bad settings, a model that already holds adapters, or ``target_modules``
            that match nothing or a layer that is not ``nn.Linear``.
        TypeError: ``model`` is not an ``nn.Module``; both or neither of ``config`` and
            ``options``.

    Example:
        >>> from mtlkit import LoRAMoE, LoRAMoEConfig
        >>> from transformers import BertConfig, BertModel
        >>> _ = torch.manual_seed(0)
        >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=32))
        >>> moe = LoRAMoE(bert, LoRAMoEConfig(tasks=["sst", "qqp", "sts"], r=4, alpha=8))
        >>> ids = torch.randint(0, 30, (3, 5))
        >>> moe(task="sst", input_ids=ids).last_hidden_state.shape
        torch.Size([3, 5, 16])
        >>> out = moe(task=["sst", "qqp", "sst"], input_ids=ids)  # one task per sample
        >>> moe.num_parameters().per_expert["sst"]  # 4 * (16 + 16) + 2 * 4 * (16 + 32)
        512

        The same mixture from keyword options: ``LoRAMoE(bert, tasks=[...], r=4, alpha=8)``.
    """

    def __init__(self, model: nn.Module, config: LoRAMoEConfig | None = None,
                 **options: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.config = resolve_config(config, options)
        check_unwrapped(model)
        targets = find_targets(model, self.config)
        saved = snapshot(model)
        try:
            self._wrap(model, targets)
        except BaseException:
            restore(model, saved)
            raise
        logger.info(
            "LoRAMoE: %d experts on %d layers, %d parameters each",
            len(self.config.tasks), len(self._layers), self._expert_size(self.config.tasks[0]),
        )

    def _wrap(self, model: nn.Module, targets: list[str]) -> None:
        heads = head_parameter_ids(model)  # before peft freezes anything
        peft_model, layers = inject(model, self.config, targets)
        # peft's PeftModel is kept off the module tree (no duplicate state-dict keys).
        object.__setattr__(self, "_peft", peft_model)
        self.model = model
        self._layers: list[nn.Module] = layers
        self._heads = [p for p in model.parameters() if id(p) in heads]
        if self.config.train_heads and self._heads:
            names = [n for n, p in model.named_parameters() if id(p) in heads]
            logger.info("LoRAMoE: training the task heads %s (train_heads=False freezes them)",
                        names)
        for p in self._heads:
            p.requires_grad_(self.config.train_heads)
        if self.config.train_base:
            for p in self._base_parameters():
                p.requires_grad_(True)
        self._state = RoutingState()
        for layer in self._layers:
            layer.register_forward_hook(RoutingHook(self._state))

    @property
    def tasks(self) -> list[str]:
        """The task names, one per expert, in order."""
        return list(self.config.tasks)

    def get_input_embeddings(self) -> nn.Module:
        """The wrapped model's input (word) embeddings, as ``transformers`` models expose them.

        So :func:`mtlkit.hf_smart_inputs` takes a mixture as its encoder: pass the task through
        its keyword arguments (``hf_smart_inputs(moe, head, ids, mask, task="sst")``) and every
        SMART pass is routed to that task's expert.

        Raises:
            TypeError: the wrapped model has no ``get_input_embeddings()``.

        Example:
            >>> from mtlkit import LoRAMoE, SmartLoss, hf_smart_inputs
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> moe = LoRAMoE(bert, tasks=["a1", "b1"], r=2)
            >>> moe.get_input_embeddings() is bert.get_input_embeddings()
            True
            >>> ids, head = torch.randint(0, 30, (2, 4)), torch.nn.Linear(16, 3)
            >>> emb, fwd = hf_smart_inputs(moe, lambda out: head(out.pooler_output), ids,
            ...                            task="a1")
            >>> bool(SmartLoss()(fwd, emb, fwd(emb)) > 0)
            True
        """
        get = getattr(self.model, "get_input_embeddings", None)
        if get is None:
            raise TypeError("model: expected a wrapped model with get_input_embeddings() (a "
                            f"transformers PreTrainedModel), got {type(self.model).__name__}")
        return get()

    # ------------------------------------------------------------------ routing
    def forward(self, *args: Any, task: str | Sequence[str] | torch.Tensor | None = None, **inputs):
        """Runs the wrapped model with each sample's expert.

        Args:
            *args: positional inputs of the wrapped model.
            task: a task name (the whole batch), a sequence of task names or a 1-D tensor of task
                indices (one per sample; training included).
            **inputs: keyword inputs of the wrapped model (``input_ids``, ``attention_mask``...).

        Returns:
            Whatever the wrapped model returns (e.g. a ``BertModel``'s output with
            ``last_hidden_state`` and ``pooler_output``).

        Raises:
            ValueError: a missing or unknown task, or a routing whose length is not the batch size.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> moe = LoRAMoE(bert, tasks=["a1", "b1"], r=2)
            >>> ids = torch.randint(0, 30, (2, 4))
            >>> moe(task=torch.tensor([1, 0]), input_ids=ids).pooler_output.shape
            torch.Size([2, 16])
            >>> moe(task=["a1"], input_ids=ids)
            Traceback (most recent call last):
            ...
            ValueError: task: expected one entry per sample (2), got 1 entries
        """
        if task is None:
            raise ValueError(f"task: expected one of {self.tasks} or one per sample, got None")
        batch_size, device = batch_info(args, inputs)
        route = build_route(task, self.config.tasks, batch_size, device)
        if self.training and checkpointing(self.model):
            raise ValueError(
                "model: expected gradient checkpointing off (its recomputed forward would run "
                "without routing), got it on; disable it on the wrapped model"
            )
        self._state.route = route
        try:
            return self.model(*args, **inputs)
        finally:
            self._state.route = None

    # --------------------------------------------------------------- parameters
    def _expert_parameters(self, task: str) -> Iterator[nn.Parameter]:
        for layer in self._layers:
            yield from layer.lora_A[task].parameters()
            yield from layer.lora_B[task].parameters()

    def _expert_size(self, task: str) -> int:
        return sum(p.numel() for p in self._expert_parameters(task))

    def _base_parameters(self) -> Iterator[nn.Parameter]:
        ours = {id(p) for t in self.config.tasks for p in self._expert_parameters(t)}
        ours |= {id(p) for p in self._heads}
        for p in self.model.parameters():
            if id(p) not in ours:
                yield p

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every expert's parameters (all tasks), the heads' (``train_heads``) and the base's
        (``train_base``).

        Unlike filtering on ``requires_grad`` after peft's ``set_adapter``, this never misses an
        inactive expert. Give it to the optimizer.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> moe = LoRAMoE(bert, tasks=["a1", "b1"], r=2)
            >>> opt = torch.optim.AdamW(moe.trainable_parameters(), lr=1e-3)
            >>> sum(p.numel() for g in opt.param_groups for p in g["params"])
            512
        """
        for task in self.config.tasks:
            yield from self._expert_parameters(task)
        if self.config.train_heads:
            yield from self._heads
        if self.config.train_base:
            yield from self._base_parameters()

    def num_parameters(self) -> ParameterCounts:
        """Counts the base, each expert, the heads, the trainable and all parameters.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> c = LoRAMoE(bert, tasks=["a1", "b1"], r=2).num_parameters()
            >>> c.per_expert, c.heads, c.trainable, c.total - c.base
            ({'a1': 256, 'b1': 256}, 0, 512, 512)
        """
        base = sum(p.numel() for p in self._base_parameters())
        per_expert = {t: self._expert_size(t) for t in self.config.tasks}
        heads = sum(p.numel() for p in self._heads)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return ParameterCounts(base=base, per_expert=per_expert, heads=heads,
                               trainable=trainable, total=base + heads + sum(per_expert.values()))

    # ------------------------------------------------------------------ merging
    def merged(self, task: str) -> nn.Module:
        """A plain copy of the wrapped model with ``task``'s expert merged into its weights.

        The result is an instance of the wrapped model's class, takes the same inputs, has no
        adapter code left (``W = W_0 + (alpha / r) B A``), is in the mixture's train/eval mode and
        has every parameter trainable. The mixture itself is left unchanged.

        Raises:
            ValueError: an unknown task.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> moe = LoRAMoE(bert, tasks=["a1", "b1"], r=2).eval()
            >>> single = moe.merged("a1")
            >>> type(single).__name__
            'BertModel'
        """
        if not isinstance(task, str) or task not in self.config.tasks:
            raise ValueError(f"task: expected one of {self.tasks}, got unknown task {task!r}")
        plain = copy.deepcopy(self._peft).merge_and_unload(adapter_names=[task])
        for p in plain.parameters():
            p.requires_grad_(True)
        return plain.train(self.training)

    # ------------------------------------------------------------- save / load
    def expert_state_dict(self) -> dict[str, torch.Tensor]:
        """The experts' tensors by name, and the task heads' when they train; never the base's.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> names = list(LoRAMoE(bert, tasks=["a1", "b1"], r=2).expert_state_dict())
            >>> len(names), names[0]
            (12, 'model.encoder.layer.0.attention.output.dense.lora_A.a1.weight')
        """
        heads = {id(p) for p in self._heads} if self.config.train_heads else set()
        return {
            name: p.detach()
            for name, p in self.named_parameters()
            if ".lora_A." in name or ".lora_B." in name or id(p) in heads
        }
