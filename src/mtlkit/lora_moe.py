"""LoRAMoE: a task-routed mixture of LoRA experts on peft (paper section 4, Eq. 6).

Each task gets its own LoRA adapter ("expert") on the same frozen base model:
``h = W_0 x + (alpha / r) B_t A_t x`` for the task ``t`` of the sample. peft creates, initializes,
merges and names the experts; the routing is ours (see ``_lora_moe_routing``), so that

* a batch can mix tasks sample by sample **in training** (peft's ``adapter_names`` is
  inference-only),
* every expert stays trainable at once (peft's ``set_adapter`` freezes the inactive ones),
* :meth:`LoRAMoE.merged` hands back a plain model of the wrapped class with one expert folded in.

Departures from the paper: the paper fine-tunes the whole model ("without parameter freezing");
here the base is frozen unless ``train_base=True``. A learned top-k router (``router="topk"``) is
offered as an extra mode; task routing is the paper's and the default.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mtlkit._lora_moe_config import LoRAMoEConfig, ParameterCounts
from mtlkit._lora_moe_io import load_experts, read_config, save_experts
from mtlkit._lora_moe_peft import build_experts
from mtlkit._lora_moe_routing import (
    Route,
    RoutingHook,
    RoutingState,
    batch_info,
    build_route,
    checkpointing,
)

__all__ = ["LoRAMoE", "LoRAMoEConfig", "ParameterCounts"]

logger = logging.getLogger(__name__)


class LoRAMoE(nn.Module):
    """A mixture of LoRA experts, one per task, on a Hugging Face model (built with peft).

    The wrapped ``model`` is modified in place (peft injects the LoRA layers into it) and kept as
    :attr:`model`. Its base weights are frozen unless ``train_base=True``; every expert is
    trainable at once, whatever the routing of the last batch.

    Args:
        model: a ``transformers`` model (``BertModel``, ``BertForSequenceClassification``, ...).
        tasks: task names, one expert each.
        r: LoRA rank (the paper: 256).
        alpha: LoRA alpha (the paper: 32); updates are scaled by ``alpha / r``.
        dropout: LoRA dropout on the experts' inputs.
        target_modules: peft ``target_modules``; ``None`` adapts each BERT layer's attention
            output dense, intermediate dense and output dense (never the pooler). Only
            ``nn.Linear`` targets are supported.
        use_rslora: scale by ``alpha / sqrt(r)`` instead.
        router: ``"task"`` (default): ``forward(task=...)`` picks the expert. ``"topk"``: a
            learned per-layer, per-token router mixes the ``top_k`` best experts (Mixtral style)
            and :attr:`load_balancing_loss` holds the Switch auxiliary loss of the last forward.
        top_k: experts per token for ``router="topk"``.
        train_base: also train the base model's weights.

    Raises:
        ValueError: bad settings, or ``target_modules`` that match nothing in ``model``.
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> from mtlkit import LoRAMoE
        >>> from transformers import BertConfig, BertModel
        >>> _ = torch.manual_seed(0)
        >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=32))
        >>> moe = LoRAMoE(bert, tasks=["sst", "qqp", "sts"], r=4, alpha=8)
        >>> ids = torch.randint(0, 30, (3, 5))
        >>> moe(task="sst", input_ids=ids).last_hidden_state.shape
        torch.Size([3, 5, 16])
        >>> out = moe(task=["sst", "qqp", "sst"], input_ids=ids)  # one task per sample
        >>> moe.num_parameters().per_expert["sst"]  # 4 * (16 + 16) + 2 * 4 * (16 + 32)
        512
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        r: int = 256,
        alpha: float = 32,
        dropout: float = 0.0,
        target_modules: Sequence[str] | str | None = None,
        use_rslora: bool = False,
        *,
        router: Literal["task", "topk"] = "task",
        top_k: int = 1,
        train_base: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.config = LoRAMoEConfig(
            tasks=list(tasks) if not isinstance(tasks, str) else tasks,
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            use_rslora=use_rslora,
            router=router,
            top_k=top_k,
        )
        peft_model, layers = build_experts(model, self.config)
        # peft's PeftModel is kept off the module tree (no duplicate state-dict keys).
        object.__setattr__(self, "_peft", peft_model)
        self.model = model
        self._layers: list[nn.Module] = layers
        self.routers = nn.ModuleList()
        if self.config.router == "topk":
            for layer in self._layers:
                lin = nn.Linear(layer.in_features, len(self.config.tasks), bias=False)
                nn.init.normal_(lin.weight, std=0.02)
                self.routers.append(lin.to(layer.get_base_layer().weight.device))
        self.train_base = bool(train_base)
        if self.train_base:
            for p in self._base_parameters():
                p.requires_grad_(True)
        routers = self.routers if self.config.router == "topk" else None
        self._state = RoutingState(self.config.tasks, self.config.top_k, routers)
        self.load_balancing_loss: torch.Tensor | None = None
        for i, layer in enumerate(self._layers):
            layer.register_forward_hook(RoutingHook(self._state, i))
        logger.info(
            "LoRAMoE: %d experts on %d layers, %d parameters each",
            len(self.config.tasks),
            len(self._layers),
            self._expert_size(self.config.tasks[0]),
        )

    @property
    def tasks(self) -> list[str]:
        """The task names, one per expert, in order."""
        return list(self.config.tasks)

    # ------------------------------------------------------------------ routing
    def forward(self, *args: Any, task: str | Sequence[str] | torch.Tensor | None = None, **inputs):
        """Runs the wrapped model with each sample's expert.

        Args:
            *args: positional inputs of the wrapped model.
            task: a task name (the whole batch), a sequence of task names or a 1-D tensor of task
                indices (one per sample; training included). Must be ``None`` with the top-k
                router, which chooses experts itself.
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
            ValueError: task: the routing has 1 entries but the batch has 2 samples
        """
        if self.config.router == "task":
            if task is None:
                raise ValueError(f"task: required with task routing; one of {self.tasks}")
            batch_size, device = batch_info(args, inputs)
            route = build_route(task, self.config.tasks, batch_size, device)
        else:
            if task is not None:
                raise ValueError("task: the top-k router picks experts itself; pass task=None")
            route = Route(None, ())
        if self.training and checkpointing(self.model):
            raise ValueError(
                "LoRAMoE does not support gradient checkpointing: the recomputed forward would "
                "run without routing. Disable it on the wrapped model."
            )
        self._state.route, self._state.aux = route, []
        try:
            output = self.model(*args, **inputs)
        finally:
            self._state.route = None
        if self.config.router == "topk":
            self.load_balancing_loss = torch.stack(self._state.aux).mean()
            self._state.aux = []
        return output

    # --------------------------------------------------------------- parameters
    def _expert_parameters(self, task: str) -> Iterator[nn.Parameter]:
        for layer in self._layers:
            yield from layer.lora_A[task].parameters()
            yield from layer.lora_B[task].parameters()

    def _expert_size(self, task: str) -> int:
        return sum(p.numel() for p in self._expert_parameters(task))

    def _base_parameters(self) -> Iterator[nn.Parameter]:
        ours = {id(p) for t in self.config.tasks for p in self._expert_parameters(t)}
        for p in self.model.parameters():
            if id(p) not in ours:
                yield p

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every expert's parameters (all tasks), the router's, and the base's if ``train_base``.

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
        yield from self.routers.parameters()
        if self.train_base:
            yield from self._base_parameters()

    def num_parameters(self) -> ParameterCounts:
        """Counts the base, each expert, the router, the trainable and all parameters.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> c = LoRAMoE(bert, tasks=["a1", "b1"], r=2).num_parameters()
            >>> c.per_expert, c.trainable, c.total - c.base
            ({'a1': 256, 'b1': 256}, 512, 512)
        """
        base = sum(p.numel() for p in self._base_parameters())
        per_expert = {t: self._expert_size(t) for t in self.config.tasks}
        router = sum(p.numel() for p in self.routers.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return ParameterCounts(
            base=base,
            per_expert=per_expert,
            router=router,
            trainable=trainable,
            total=base + sum(per_expert.values()) + router,
        )

    # ------------------------------------------------------------------ merging
    def merged(self, task: str) -> nn.Module:
        """A plain copy of the wrapped model with ``task``'s expert merged into its weights.

        The result is an instance of the wrapped model's class, takes the same inputs, has no
        adapter code left (``W = W_0 + (alpha / r) B A``), is in the mixture's train/eval mode and
        has every parameter trainable. The mixture itself is left unchanged.

        Raises:
            ValueError: an unknown task, or a top-k router (no single expert to merge).

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
        if self.config.router != "task":
            raise ValueError("merged: a top-k router mixes experts per token; nothing to merge")
        if not isinstance(task, str) or task not in self.config.tasks:
            raise ValueError(f"task: unknown task {task!r}; known tasks are {self.tasks}")
        peft_copy = copy.deepcopy(self._peft)
        plain = peft_copy.merge_and_unload(adapter_names=[task])
        for p in plain.parameters():
            p.requires_grad_(True)
        return plain.train(self.training)

    # ------------------------------------------------------------- save / load
    def expert_state_dict(self) -> dict[str, torch.Tensor]:
        """The experts' (and router's) tensors by name; the base model is not included.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> names = list(LoRAMoE(bert, tasks=["a1", "b1"], r=2).expert_state_dict())
            >>> len(names), names[0]
            (12, 'model.encoder.layer.0.attention.output.dense.lora_A.a1.weight')
        """
        return {
            name: p.detach()
            for name, p in self.named_parameters()
            if ".lora_A." in name or ".lora_B." in name or name.startswith("routers.")
        }

    def save_experts(self, path: str | Path) -> Path:
        """Writes the experts to ``path/experts.safetensors`` and the settings to ``lora_moe.json``.

        The base model is not saved: load the experts onto a fresh copy with
        :meth:`from_pretrained`.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> import tempfile
            >>> from transformers import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                  num_attention_heads=2, intermediate_size=32)
            >>> moe = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = moe.save_experts(d)
            ...     again = LoRAMoE.from_pretrained(BertModel(cfg), d)
            >>> again.tasks
            ['a1', 'b1']
        """
        return save_experts(self, path)

    def load_experts(self, path: str | Path) -> None:
        """Loads experts saved by :meth:`save_experts` into this mixture (same names and shapes).

        Raises:
            FileNotFoundError: no ``experts.safetensors`` under ``path``.
            ValueError: missing, unexpected or mis-shaped tensors.

        Example:
            >>> import tempfile
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                  num_attention_heads=2, intermediate_size=32)
            >>> moe = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> other = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = moe.save_experts(d)
            ...     other.load_experts(d)
            >>> all(torch.equal(a, b) for a, b in zip(moe.expert_state_dict().values(),
            ...                                       other.expert_state_dict().values()))
            True
        """
        load_experts(self, path)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path, **kwargs: Any) -> LoRAMoE:
        """Builds a mixture on ``model`` with the saved settings and loads the saved experts.

        Args:
            model: a fresh base model of the same architecture as the saved one.
            path: a directory written by :meth:`save_experts`.
            **kwargs: keyword-only options of the constructor (``train_base``).

        Raises:
            FileNotFoundError: ``path`` holds no saved mixture.
            ValueError: the saved experts do not fit ``model``.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> LoRAMoE.from_pretrained(bert, "no/such/dir")
            Traceback (most recent call last):
            ...
            FileNotFoundError: path: no lora_moe.json in no/such/dir

            See :meth:`save_experts` for a round trip.
        """
        moe = cls(model, **read_config(path).to_dict(), **kwargs)
        moe.load_experts(path)
        return moe
