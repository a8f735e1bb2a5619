"""MultiTaskTrainer's argument checks: every bad input gets a ValueError/TypeError naming it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from mtlkit import MultiTaskLoader, SmartLoss
from mtlkit.weighting import LossWeighting, Weighting

INTERLEAVED = "interleaved"


def check_task_datasets(datasets: Any, name: str, known: Collection[str] | None) -> dict[str, Any]:
    """``datasets`` as a dict ``{task: dataset}``, every task in ``known`` (when given)."""
    if not isinstance(datasets, Mapping):
        raise TypeError(
            f"{name}: expected a mapping {{task: Dataset}}, got {type(datasets).__name__}"
        )
    if not datasets:
        raise ValueError(f"{name}: expected at least one task, got an empty mapping")
    for task, dataset in datasets.items():
        if not isinstance(task, str):
            raise TypeError(f"{name}: expected task names (str) as keys, got {task!r}")
        if dataset is None or not callable(getattr(dataset, "__getitem__", None)):
            raise TypeError(
                f"{name}[{task!r}]: expected a map-style Dataset, got {type(dataset).__name__}"
            )
        if len(dataset) == 0:
            raise ValueError(f"{name}[{task!r}]: expected a non-empty dataset, got 0 rows")
    check_known(datasets, name, known)
    return dict(datasets)


def check_known(mapping: Mapping[str, Any], name: str, known: Collection[str] | None) -> None:
    """ValueError for a key of ``mapping`` that is not a task in ``known``."""
    if known is None:
        return
    for task in mapping:
        if task not in known:
            raise ValueError(
                f"{name}: expected tasks among {sorted(known)}, got unknown task {task!r}"
            )


def model_tasks(model: Any) -> list[str] | None:
    """The task names a model declares (``model.tasks``, as LoRAMoE has), else ``None``."""
    tasks = getattr(model, "tasks", None)
    if isinstance(tasks, (list, tuple)) and tasks and all(isinstance(t, str) for t in tasks):
        return list(tasks)
    return None


def per_task(value: Any, name: str, tasks: list[str], kind: type | tuple[type, ...],
             default: Any = None) -> dict[str, Any]:
    """A per-task setting given once for all tasks or as a ``{task: value}`` mapping."""
    if isinstance(value, Mapping):
        check_known(value, name, tasks)
        out = {t: value.get(t, default) for t in tasks}
    else:
        out = dict.fromkeys(tasks, default if value is None else value)
    for task, v in out.items():
        if v is not None and not isinstance(v, kind):
            raise TypeError(
                f"{name}[{task!r}]: expected {getattr(kind, '__name__', kind)}, "
                f"got {type(v).__name__}"
            )
    return out


def check_batch_sizes(batch_sizes: Mapping[str, int] | None, default: int,
                      tasks: list[str]) -> dict[str, int]:
    sizes = per_task(batch_sizes, "batch_sizes", tasks, int, default)
    for task, size in sizes.items():
        if isinstance(size, bool) or size < 1:
            raise ValueError(f"batch_sizes[{task!r}]: expected a positive int, got {size!r}")
    return sizes


def check_callables(value: Any, name: str, tasks: list[str], default: Any) -> dict[str, Any]:
    if value is not None and not isinstance(value, Mapping) and not callable(value):
        raise TypeError(
            f"{name}: expected a callable or a mapping {{task: callable}}, got "
            f"{type(value).__name__}"
        )
    out = per_task(value, name, tasks, object, default)
    for task, fn in out.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}[{task!r}]: expected a callable, got {type(fn).__name__}")
    return out


def check_smart(smart: Any, weight: Any, tasks: list[str]) -> dict[str, tuple[SmartLoss, float]]:
    """``{task: (SmartLoss, weight)}`` for the tasks that get a SMART term."""
    if smart is None:
        return {}
    if not isinstance(smart, Mapping):
        raise TypeError(
            f"smart: expected a mapping {{task: SmartLoss}}, got {type(smart).__name__}"
        )
    check_known(smart, "smart", tasks)
    weights = weight if isinstance(weight, Mapping) else dict.fromkeys(smart, weight)
    check_known(weights, "smart_weight", list(smart))
    out = {}
    for task, term in smart.items():
        if not isinstance(term, SmartLoss):
            raise TypeError(f"smart[{task!r}]: expected a SmartLoss, got {type(term).__name__}")
        w = weights.get(task, 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"smart_weight[{task!r}]: expected a number >= 0, got {w!r}")
        out[task] = (term, float(w))
    return out


def resolve_weighting(weighting: Any) -> Weighting | LossWeighting | None:
    """``None`` (plain sum), a name for ``mtlkit.weighting.by_name``, or a weighting object."""
    if weighting is None or isinstance(weighting, (Weighting, LossWeighting)):
        return weighting
    if isinstance(weighting, str):
        import mtlkit.weighting

        by_name = getattr(mtlkit.weighting, "by_name", None)
        if by_name is None and weighting.lower() == "pcgrad":  # until by_name lands
            return mtlkit.weighting.PCGrad()
        if by_name is None:
            raise ValueError(f"weighting: expected 'pcgrad', got {weighting!r}")
        return by_name(weighting)
    hint = ""
    if type(weighting).__name__ in ("PCGrad", "MultiTaskOptimizer"):
        hint = " (the optimizer wrapper is built for you: pass mtlkit.weighting.PCGrad())"
    raise TypeError(
        "weighting: expected None, a name from mtlkit.weighting.NAMES, a "
        f"mtlkit.weighting.Weighting or LossWeighting, got {type(weighting).__name__}{hint}"
    )


def check_combination(
    weighting: Weighting | LossWeighting | None,
    tasks: list[str],
    mode: str,
    accumulation: int,
    per_sample_routing: bool,
    smart: Mapping[str, Any],
) -> None:
    """The combinations of weighting, sampling mode and options that cannot work."""
    if mode not in MultiTaskLoader.modes:
        raise ValueError(f"sampling: expected one of {MultiTaskLoader.modes}, got {mode!r}")
    if per_sample_routing and mode != INTERLEAVED:
        raise ValueError(
            "per_sample_routing: expected sampling='interleaved' (one batch of every task per "
            f"step, routed in one forward), got sampling={mode!r}"
        )
    if per_sample_routing and smart:
        raise ValueError("smart: not supported with per_sample_routing=True (one forward per task)")
    if weighting is None:
        return
    if len(tasks) < 2:
        raise ValueError(
            f"weighting: expected at least two tasks to weigh, got {len(tasks)} task(s) {tasks}"
        )
    if isinstance(weighting, LossWeighting) and mode != INTERLEAVED:
        raise ValueError(
            f"weighting: a LossWeighting ({type(weighting).__name__}) needs every task's loss at "
            f"every step: expected sampling='interleaved', got sampling={mode!r}"
        )
    if not isinstance(weighting, LossWeighting) and mode != INTERLEAVED and accumulation < 2:
        raise ValueError(
            f"weighting: sampling={mode!r} draws one task per batch, so with "
            "gradient_accumulation_steps=1 every optimizer step has one task and nothing to "
            "weigh: expected gradient_accumulation_steps >= 2 (e.g. the number of tasks with "
            "'round_robin') or sampling='interleaved'"
        )


def check_trainer_args(args: Any, distributed_kind: Callable[[], str]) -> None:
    """TrainingArguments this trainer cannot honour."""
    if getattr(args, "auto_find_batch_size", False):
        raise ValueError(
            "args.auto_find_batch_size: not supported by MultiTaskTrainer (expected False, got "
            "True); set per_device_train_batch_size or batch_sizes"
        )
    kind = distributed_kind()
    if kind:
        raise ValueError(
            f"args: MultiTaskTrainer runs one forward and backward per task and averages the "
            f"gradients (or combines the task gradients) itself once per step, which {kind} "
            f"does not allow: expected one process or plain data parallelism (DDP), got {kind}"
        )
