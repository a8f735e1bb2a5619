"""The settings of a :class:`~mtlkit.LoRAMoE` (peft's ``config`` role) and its parameter counts."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

#: The paper's three matrices per BERT layer (attention_dense, interm_dense, out_dense), matched by
#: full name so the pooler, the query/key/value projections and task heads are never adapted.
BERT_TARGET_MODULES = r".*layer\.\d+\.(attention\.output|intermediate|output)\.dense"

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
# peft keeps each layer's experts in nn.ModuleDict / nn.ParameterDict objects keyed by task, and
# these refuse keys that are already attributes ("type", "eval", "train", "to", ...).
_DICT_ATTRIBUTES = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))


def _check_tasks(tasks: object) -> list[str]:
    if isinstance(tasks, (str, bytes)) or not hasattr(tasks, "__iter__"):
        raise TypeError(f"tasks: expected a sequence of task names, got {tasks!r}")
    names = list(tasks)  # type: ignore[call-overload]
    if not names:
        raise ValueError("tasks: expected at least one task name, got an empty sequence")
    for name in names:
        if not isinstance(name, str) or not _TASK_NAME.match(name) or name == "__base__":
            raise ValueError(
                f"tasks: expected valid task names (letters, digits, '_' and '-', not starting "
                f"with a digit), got {name!r}"
            )
        if name in _DICT_ATTRIBUTES:
            raise ValueError(
                "tasks: expected names that are not attributes of torch.nn.ModuleDict (peft "
                f"keeps each layer's experts in one, keyed by task), got {name!r}; rename it, "
                f"e.g. {name + '_task'!r}"
            )
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise ValueError(f"tasks: expected unique names, got duplicates {dupes}")
    return names


@dataclass
class LoRAMoEConfig:
    """Every option of a :class:`~mtlkit.LoRAMoE`, validated; saved as JSON beside the experts.

    ``LoRAMoE(model, config)`` takes it; ``LoRAMoE(model, tasks=..., r=...)`` builds it from the
    same names.

    Args:
        tasks: one expert per task name (unique identifiers: letters, digits, ``_``, ``-``; not
            an attribute name of ``torch.nn.ModuleDict`` such as ``"type"`` or ``"eval"``).
        r: LoRA rank of every expert (the paper: 256).
        alpha: LoRA scaling numerator (the paper: 32); the update is scaled by ``alpha / r``
            (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the expert's input (LoRA dropout).
        target_modules: peft ``target_modules`` (a list of name suffixes or one full-match regex);
            ``None`` means the paper's three dense layers of every BERT layer (never the pooler,
            the query/key/value projections or task heads). Only ``nn.Linear`` targets.
        use_rslora: rank-stabilized scaling.
        train_base: also train the base model's own weights (the paper trains everything; by
            default the base is frozen and only the experts and heads train).
        train_heads: train the wrapped model's task heads: the parameters outside its Hugging Face
            ``base_model`` (``classifier`` of a ``BertForSequenceClassification``), which are
            freshly initialised and must learn. Without a head (a ``BertModel``) this changes
            nothing. Trained heads are saved with the experts.

    Example:
        >>> from mtlkit import LoRAMoEConfig
        >>> LoRAMoEConfig(tasks=["sst", "qqp"], r=8).train_base
        False
        >>> LoRAMoEConfig(tasks=["sst", "sst"])
        Traceback (most recent call last):
        ...
        ValueError: tasks: expected unique names, got duplicates ['sst']
    """

    tasks: list[str]
    r: int = 256
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    train_base: bool = False
    train_heads: bool = True

    def __post_init__(self) -> None:
        self.tasks = _check_tasks(self.tasks)
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
        for name in ("use_rslora", "train_base", "train_heads"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        """The option names, in order (what ``LoRAMoE(model, **options)`` accepts).

        Example:
            >>> from mtlkit import LoRAMoEConfig
            >>> LoRAMoEConfig.field_names()[:3]
            ['tasks', 'r', 'alpha']
        """
        return [f.name for f in fields(cls)]

    @property
    def peft_target_modules(self) -> list[str] | str:
        """What peft's ``LoraConfig.target_modules`` receives."""
        return BERT_TARGET_MODULES if self.target_modules is None else self.target_modules

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict; ``LoRAMoEConfig(**d)`` rebuilds the config.

        Example:
            >>> from mtlkit import LoRAMoEConfig
            >>> LoRAMoEConfig(**LoRAMoEConfig(tasks=["a1"], r=2).to_dict()).r
            2
        """
        return asdict(self)


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a :class:`~mtlkit.LoRAMoE` (numbers of scalars, not bytes).

    Attributes:
        base: the wrapped model's own parameters, heads excluded (frozen unless ``train_base``).
        per_expert: each task's LoRA parameters (its A and B matrices in every adapted layer).
        heads: the task heads' parameters (outside the Hugging Face ``base_model``; 0 for a bare
            encoder such as ``BertModel``), trained unless ``train_heads=False``.
        trainable: parameters with ``requires_grad`` (what an optimizer should receive).
        total: everything: ``base + heads + sum(per_expert)``.

    Example:
        >>> from mtlkit import ParameterCounts
        >>> c = ParameterCounts(base=10, per_expert={"a": 2, "b": 2}, heads=3,
        ...                     trainable=7, total=17)
        >>> c.experts
        4
    """

    base: int
    per_expert: dict[str, int]
    heads: int
    trainable: int
    total: int

    @property
    def experts(self) -> int:
        """All experts' parameters together."""
        return sum(self.per_expert.values())


def resolve_config(config: object, options: dict[str, Any]) -> LoRAMoEConfig:
    """The one config: given, or built from keyword options; never both."""
    if config is None:
        unknown = sorted(options.keys() - set(LoRAMoEConfig.field_names()))
        if unknown:
            raise TypeError(
                f"options: expected LoRAMoEConfig fields {LoRAMoEConfig.field_names()}, got "
                f"unknown {unknown}"
            )
        if "tasks" not in options:
            raise TypeError("config: expected a LoRAMoEConfig or tasks=[...], got neither")
        return LoRAMoEConfig(**options)
    if not isinstance(config, LoRAMoEConfig):
        raise TypeError(
            f"config: expected a LoRAMoEConfig, got {type(config).__name__} {config!r:.60}; "
            "pass task names as tasks=[...]"
        )
    if options:
        raise TypeError(
            f"options: expected none beside config, got {sorted(options)}; set them in the "
            "LoRAMoEConfig"
        )
    return dataclasses.replace(config)  # a validated copy: later edits to yours do not leak in
