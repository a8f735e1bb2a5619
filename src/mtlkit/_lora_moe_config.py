"""Private configuration and parameter-count records for :class:`mtlkit.LoRAMoE`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: The paper's three matrices per BERT layer (attention_dense, interm_dense, out_dense), matched by
#: full name so the pooler, the query/key/value projections and task heads are never adapted.
BERT_TARGET_MODULES = r".*layer\.\d+\.(attention\.output|intermediate|output)\.dense"

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass
class LoRAMoEConfig:
    """Validated settings of a :class:`~mtlkit.LoRAMoE`; saved as JSON beside the experts.

    Args:
        tasks: one expert per task name (unique identifiers: letters, digits, ``_``, ``-``).
        r: LoRA rank of every expert.
        alpha: LoRA scaling numerator; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)``
            with ``use_rslora``).
        dropout: dropout on the expert's input (LoRA dropout).
        target_modules: peft ``target_modules`` (a list of name suffixes or one full-match regex);
            ``None`` means the paper's three dense layers of every BERT layer.
        use_rslora: rank-stabilized scaling.
        router: ``"task"`` (route by task name, the paper) or ``"topk"`` (a learned router).
        top_k: experts mixed per token when ``router="topk"``.

    Example:
        >>> from mtlkit import LoRAMoEConfig
        >>> LoRAMoEConfig(tasks=["sst", "qqp"], r=8).router
        'task'
        >>> LoRAMoEConfig(tasks=["sst", "sst"])
        Traceback (most recent call last):
        ...
        ValueError: tasks: duplicate task names ['sst']
    """

    tasks: list[str]
    r: int = 256
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    router: Literal["task", "topk"] = "task"
    top_k: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not hasattr(self.tasks, "__iter__"):
            raise TypeError(f"tasks: expected a sequence of task names, got {self.tasks!r}")
        self.tasks = list(self.tasks)
        if not self.tasks:
            raise ValueError("tasks: at least one task is required")
        for name in self.tasks:
            if not isinstance(name, str) or not _TASK_NAME.match(name) or name == "__base__":
                raise ValueError(
                    f"tasks: {name!r} is not a valid task name (letters, digits, '_' and '-', "
                    "not starting with a digit)"
                )
        dupes = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dupes:
            raise ValueError(f"tasks: duplicate task names {dupes}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r: expected a positive integer rank, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise TypeError(f"alpha: expected a number, got {self.alpha!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha: expected a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        tm = self.target_modules
        if tm is not None and not isinstance(tm, str):
            tm = list(tm)
            if not tm or not all(isinstance(t, str) for t in tm):
                raise TypeError(f"target_modules: expected a regex or a list of names, got {tm!r}")
            self.target_modules = tm
        if self.router not in ("task", "topk"):
            raise ValueError(f"router: expected 'task' or 'topk', got {self.router!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise TypeError(f"top_k: expected an integer, got {self.top_k!r}")
        if not 1 <= self.top_k <= len(self.tasks):
            raise ValueError(f"top_k: expected 1 <= top_k <= {len(self.tasks)}, got {self.top_k}")

    @property
    def peft_target_modules(self) -> list[str] | str:
        """What peft's ``LoraConfig.target_modules`` receives."""
        return BERT_TARGET_MODULES if self.target_modules is None else self.target_modules

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict; ``LoRAMoEConfig(**d)`` rebuilds the config."""
        return asdict(self)


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a :class:`~mtlkit.LoRAMoE` (numbers of scalars, not bytes).

    Attributes:
        base: the wrapped model's own parameters (frozen unless ``train_base=True``).
        per_expert: each task's LoRA parameters (its A and B matrices in every adapted layer).
        router: the learned router's parameters (0 with task routing).
        trainable: parameters with ``requires_grad`` (what an optimizer should receive).
        total: everything: ``base + sum(per_expert) + router``.

    Example:
        >>> from mtlkit import ParameterCounts
        >>> c = ParameterCounts(base=10, per_expert={"a": 2, "b": 2}, router=0,
        ...                     trainable=4, total=14)
        >>> c.experts
        4
    """

    base: int
    per_expert: dict[str, int]
    router: int
    trainable: int
    total: int

    @property
    def experts(self) -> int:
        """All experts' parameters together."""
        return sum(self.per_expert.values())
