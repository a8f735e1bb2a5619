"""Multi-task loading: one DataLoader per task, combined by a mode from one registry.

Implements the "interleaved training with sampling" of the reference paper (section 4): every
step holds one batch of every task, an epoch is as long as the largest task, and smaller tasks
are cycled ("circular sampling") until it ends. The other modes are the usual alternatives
(round-robin, proportional, temperature and explicitly weighted sampling, and the paper's
sequential baseline). The task sequence is a function of ``(seed, epoch)`` alone, so every DDP
rank picks the same task at the same step; see :class:`MultiTaskLoader`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, get_args

from . import _distributed
from ._loader_inner import EXHAUSTED, inner_epoch, is_stateful, mix_seed, set_inner_epoch, start
from ._loader_modes import MODES, ModeSpec, probabilities

__all__ = ["Mode", "MultiTaskLoader"]

logger = logging.getLogger(__name__)

Mode = Literal["interleaved", "round_robin", "proportional", "temperature", "weighted", "sequential"]
_VERSION = 1


class MultiTaskLoader:
    """Combine one loader per task into a multi-task epoch.

    Each task keeps its own loader (batch size, ``collate_fn``, sampler, workers); any iterable
    works, a :class:`torch.utils.data.DataLoader` being the usual one. ``mode`` decides what a
    step is:

    * ``"interleaved"`` (the paper's): a dict ``{task: batch}`` with one batch of every task.
      An epoch has ``max(len)`` steps; a smaller loader restarts (a fresh shuffle) each time it
      runs out, so all of its batches are seen before any repeats.
    * ``"round_robin"``: ``(task, batch)`` with the tasks in a fixed cyclic order, smaller
      loaders cycled the same way; ``T * max(len)`` steps.
    * ``"proportional"``: ``(task, batch)``, task ``t`` drawn with probability
      ``n_t / sum(n)`` *without replacement*, so an epoch of ``sum(len)`` steps holds every batch
      of every loader exactly once, in a seeded random task order.
    * ``"temperature"``: ``(task, batch)``, drawn independently with probability proportional to
      ``n_t ** (1 / temperature)``; ``sum(len)`` steps.
    * ``"weighted"``: like ``"temperature"`` with the probabilities given by ``weights``.
    * ``"sequential"``: ``(task, batch)``, every batch of the first task, then the next
      (the paper's baseline); ``sum(len)`` steps.

    ``steps_per_epoch`` overrides the epoch length of every mode but ``"sequential"``.

    Determinism and DDP: the task drawn at each step is a function of ``(seed, epoch)`` only, so
    every rank draws the same task at the same step (otherwise different task heads would get
    gradients on different ranks and DDP would hang or fail). Give each task loader a
    :class:`~torch.utils.data.DistributedSampler` for disjoint data per rank. Inner loaders
    restart with ``set_epoch(epoch + cycle * 2**32)`` on their samplers (cycle 0 is ``epoch``,
    later cycles are fresh shuffles), and are created with torch's CPU generator seeded from
    ``(seed, epoch, task, cycle)`` and restored afterwards, so a default ``RandomSampler`` also
    shuffles reproducibly. With ``check_ranks`` (the default) the start of every epoch
    all-gathers the configuration and raises ``ValueError`` if the ranks disagree.

    Epochs: a completed pass advances the epoch by one; :meth:`set_epoch` sets it explicitly
    (and reaches every inner sampler's ``set_epoch``). Inner iterators are created lazily, when
    their first batch is needed, and nothing is materialized.

    Resuming: :meth:`state_dict` holds the epoch, the step, the schedule's RNG state and, per
    task, its cycle and batches consumed. After :meth:`load_state_dict` the next iteration
    yields exactly the rest of the interrupted epoch. An inner loader with its own
    ``state_dict``/``load_state_dict`` (torchdata's ``StatefulDataLoader``) is restored from its
    own state; any other is restarted for its recorded cycle and fast-forwarded: a
    single-process ``DataLoader`` over a map-style dataset skips at the sampler level (no sample
    is loaded); other loaders have their consumed batches read and discarded. Fast-forward is
    exact when the inner loader is deterministic given its sampler epoch and the seeded global
    generator (``DistributedSampler``, ``SequentialSampler``, default ``RandomSampler``); a
    sampler with its own ``torch.Generator`` needs a ``StatefulDataLoader`` for an exact resume.

    Args:
        loaders: ``{task: loader}``; the order of the mapping is the task order.
        mode: one of :data:`MultiTaskLoader.modes`.
        seed: seeds the task schedule and the inner loaders' restarts.
        temperature: for ``mode="temperature"`` (default 2.0); must be > 0.
        weights: for ``mode="weighted"``: ``{task: weight}`` covering every task, weights >= 0.
        steps_per_epoch: epoch length override (not for ``"sequential"``).
        check_ranks: verify across DDP ranks that the configuration and position agree.

    Raises:
        ValueError: unknown mode, empty mapping, empty loader, a loader without ``len()`` in a
            mode that needs it, bad ``weights``/``temperature``/``steps_per_epoch``.
        TypeError: ``loaders`` not a mapping of ``str`` to iterables.

    Example:
        >>> loader = MultiTaskLoader({"sst": ["s0", "s1"], "qqp": ["q0", "q1", "q2"]})
        >>> len(loader), list(loader)[2]
        (3, {'sst': 's0', 'qqp': 'q2'})
        >>> rr = MultiTaskLoader({"sst": ["s0"], "qqp": ["q0", "q1"]}, mode="round_robin")
        >>> list(rr)
        [('sst', 's0'), ('qqp', 'q0'), ('sst', 's0'), ('qqp', 'q1')]
    """

    modes: tuple[str, ...] = get_args(Mode)
    """The valid values of ``mode``, in registry order."""

    def __init__(
        self,
        loaders: Mapping[str, Iterable],
        mode: Mode = "interleaved",
        seed: int = 0,
        *,
        temperature: float | None = None,
        weights: Mapping[str, float] | None = None,
        steps_per_epoch: int | None = None,
        check_ranks: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(loaders, Mapping):
            raise TypeError(f"loaders must be a Mapping[str, Iterable], got {type(loaders).__name__}")
        if len(loaders) == 0:
            raise ValueError("loaders must hold at least one task, got an empty mapping")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self._spec: ModeSpec = MODES[mode]
        self._mode = mode
        self._seed = seed
        self._names = tuple(loaders)
        self._loaders = tuple(loaders.values())
        self._sizes = [_size(name, dl) for name, dl in loaders.items()]
        self._check_ranks = bool(check_ranks)
        if self._spec.sizes_needed or (steps_per_epoch is None and self._spec.cycles):
            unsized = [n for n, s in zip(self._names, self._sizes, strict=True) if s is None]
            if unsized:
                raise ValueError(
                    f"mode={mode!r} needs len() of every loader (pass steps_per_epoch where the "
                    f"mode allows it); loaders without len(): {unsized}"
                )
        self._temperature = _check_temperature(mode, temperature)
        self._weights = _check_weights(mode, weights, self._names)
        self._steps = _check_steps(mode, steps_per_epoch, self._spec, self._sizes)
        self._epoch = 0
        self._run: _Run | None = None
        self._pending: dict[str, Any] | None = None

    # -- public properties -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The mode this loader was built with."""
        return self._mode

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names, in order."""
        return self._names

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs (or the running one)."""
        return self._epoch

    @property
    def probabilities(self) -> dict[str, float] | None:
        """Per-step task probabilities of the sampled modes, ``None`` for the others.

        Example:
            >>> MultiTaskLoader({"a": [0] * 9, "b": [0]}, mode="temperature",
            ...                 temperature=2.0).probabilities
            {'a': 0.75, 'b': 0.25}
        """
        probs = probabilities(self._mode, self._sizes, self._temperature, self._weights)
        return None if probs is None else dict(zip(self._names, probs, strict=True))

    def __len__(self) -> int:
        """Steps in one epoch; ``TypeError`` when unknown (a sequential unsized loader)."""
        if self._steps is None:
            raise TypeError("len() is undefined: a loader has no len() (mode='sequential')")
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next, and call ``set_epoch(epoch)`` on every inner sampler now.

        A state loaded with :meth:`load_state_dict` for another epoch is dropped.

        Example:
            >>> loader = MultiTaskLoader({"a": [1, 2], "b": [3]}, mode="proportional")
            >>> loader.set_epoch(3)
            >>> loader.epoch
            3
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if self._pending is not None and self._pending["epoch"] != epoch:
            logger.info(
                "set_epoch(%d) drops the loaded state of epoch %d", epoch, self._pending["epoch"]
            )
            self._pending = None
        self._epoch = epoch
        for dl in self._loaders:
            set_inner_epoch(dl, epoch)

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._epoch = pending["epoch"]
        run = _Run(self, self._epoch, pending)
        self._run = run
        return self._iterate(run)

    def _iterate(self, run: _Run) -> Iterator[Any]:
        if self._check_ranks:
            run.check_ranks()
        if self._spec.yields_dict:
            yield from _interleaved(run)
        elif self._spec.cycles:
            yield from _sampled(run)
        else:
            yield from _sequential(run)
        if self._run is run:
            self._run = None
            if self._epoch == run.epoch:
                self._epoch = run.epoch + 1

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: epoch, step, RNG state, and each task's position.

        Everything outside ``loaders[task]["state"]`` (an inner loader's own state) is plain
        JSON. Taken between steps, it resumes with the step after the last one yielded.

        Example:
            >>> loader = MultiTaskLoader({"a": [1, 2, 3], "b": [4]}, mode="round_robin")
            >>> it = iter(loader); _ = next(it), next(it)
            >>> state = loader.state_dict(); state["epoch"], state["step"]
            (0, 2)
        """
        if self._pending is not None:
            return _copy(self._pending)
        if self._run is not None:
            return self._run.state()
        return _Run(self, self._epoch, None).state()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields the rest of its epoch.

        Example:
            >>> make = lambda: MultiTaskLoader({"a": [1, 2, 3], "b": [4]}, mode="proportional")
            >>> loader = make(); it = iter(loader); head = [next(it) for _ in range(2)]
            >>> resumed = make(); resumed.load_state_dict(loader.state_dict())
            >>> head + list(resumed) == list(make())
            True
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a Mapping, got {type(state_dict).__name__}")
        missing = {"version", "mode", "tasks", "seed", "epoch", "step", "schedule", "loaders"}
        missing -= set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks keys {sorted(missing)}")
        expected = {"version": _VERSION, "mode": self._mode, "tasks": list(self._names),
                    "seed": self._seed, "steps": self._steps}
        for key, value in expected.items():
            if state_dict.get(key) != value:
                raise ValueError(
                    f"state_dict[{key!r}] is {state_dict.get(key)!r} but this loader has {value!r}"
                )
        if set(state_dict["loaders"]) != set(self._names):
            raise ValueError(f"state_dict['loaders'] must have the tasks {list(self._names)}")
        self._pending = _copy(dict(state_dict))
        self._epoch = int(state_dict["epoch"])
        self._run = None


class _Run:
    """One pass over an epoch: inner iterators and positions (shared with ``state_dict``)."""

    def __init__(self, owner: MultiTaskLoader, epoch: int, resume: Mapping[str, Any] | None):
        self.owner = owner
        self.epoch = epoch
        n = len(owner._names)
        self.its: list[Iterator | None] = [None] * n
        self.cycles = [0] * n
        self.consumed = [0] * n
        self.inner_states: list[Any] = [None] * n
        self.step = 0
        self.steps = owner._steps
        self.task = 0  # the current task of "sequential"
        spec = owner._spec
        self.schedule = None
        if spec.schedule is not None:
            self.schedule = spec.schedule(
                owner._sizes, owner._seed, owner._weights, owner._temperature or 1.0
            )
        if resume is None:
            if self.schedule is not None:
                self.schedule.begin(epoch, 0)
            return
        self.step = int(resume["step"])
        self.task = int(resume.get("task", 0))
        for i, name in enumerate(owner._names):
            pos = resume["loaders"][name]
            self.cycles[i], self.consumed[i] = int(pos["cycle"]), int(pos["consumed"])
            self.inner_states[i] = pos.get("state")
        if self.schedule is not None:
            self.schedule.begin(epoch, self.step if resume["schedule"] is None else 0)
            self.schedule.load(resume["schedule"])

    def fetch(self, i: int, cycle_on_exhaust: bool = True) -> Any:
        """The next batch of task ``i`` when its iterator is missing or ran out (slow path)."""
        owner = self.owner
        while True:
            if self.its[i] is not None:
                if not cycle_on_exhaust:
                    return EXHAUSTED
                self.cycles[i] += 1
                self.consumed[i] = 0
                self.inner_states[i] = None
            state, skip = self.inner_states[i], self.consumed[i]
            name, dl = owner._names[i], owner._loaders[i]
            if state is not None and not is_stateful(dl):
                raise ValueError(f"the saved state of task {name!r} needs a stateful loader")
            self.inner_states[i] = None
            it, batch = start(
                dl,
                rng_seed=mix_seed("mtlkit.inner", owner._seed, self.epoch, name, self.cycles[i]),
                epoch=inner_epoch(self.epoch, self.cycles[i]),
                skip=0 if state is not None else skip,
                state=state,
            )
            self.its[i] = it
            if batch is EXHAUSTED:
                if skip == 0 and state is None:
                    raise ValueError(f"loader {name!r} yielded no batches")
                continue
            self.consumed[i] = skip + 1
            return batch

    def state(self) -> dict[str, Any]:
        owner = self.owner
        loaders = {}
        for i, name in enumerate(owner._names):
            inner = self.inner_states[i]
            if self.its[i] is not None and is_stateful(owner._loaders[i]):
                inner = owner._loaders[i].state_dict()  # type: ignore[attr-defined]
            loaders[name] = {"cycle": self.cycles[i], "consumed": self.consumed[i], "state": inner}
        return {
            "version": _VERSION, "mode": owner._mode, "tasks": list(owner._names),
            "seed": owner._seed, "steps": self.steps, "epoch": self.epoch, "step": self.step,
            "task": self.task,
            "schedule": None if self.schedule is None else self.schedule.state(),
            "loaders": loaders,
        }

    def check_ranks(self) -> None:
        """Raise ``ValueError`` on every rank when the ranks' configurations differ."""
        if _distributed.get_world_size() == 1:
            return
        import torch.distributed as dist

        owner = self.owner
        mine = (owner._mode, owner._names, owner._seed, owner._sizes, self.steps, self.epoch,
                self.step)
        everyone: list[Any] = [None] * _distributed.get_world_size()
        dist.all_gather_object(everyone, mine)
        if any(other != mine for other in everyone):
            raise ValueError(
                "MultiTaskLoader differs across ranks (mode, tasks, seed, loader sizes, steps, "
                f"epoch, step): {everyone}; the ranks would train different task heads"
            )


def _interleaved(run: _Run) -> Iterator[dict[str, Any]]:
    names, its, consumed = run.owner._names, run.its, run.consumed
    pairs = list(enumerate(names))
    for step in range(run.step, run.steps):  # type: ignore[arg-type]
        out = {}
        for i, name in pairs:
            it = its[i]
            if it is not None:
                try:
                    out[name] = next(it)
                    consumed[i] += 1
                    continue
                except StopIteration:
                    pass
            out[name] = run.fetch(i)
        run.step = step + 1
        yield out


def _sampled(run: _Run) -> Iterator[tuple[str, Any]]:
    names, its, consumed = run.owner._names, run.its, run.consumed
    draw = run.schedule.draw  # type: ignore[union-attr]
    for step in range(run.step, run.steps):  # type: ignore[arg-type]
        i = draw()
        it = its[i]
        batch = EXHAUSTED
        if it is not None:
            try:
                batch = next(it)
                consumed[i] += 1
            except StopIteration:
                pass
        if batch is EXHAUSTED:
            batch = run.fetch(i)
        run.step = step + 1
        yield names[i], batch


def _sequential(run: _Run) -> Iterator[tuple[str, Any]]:
    names = run.owner._names
    while run.task < len(names):
        i = run.task
        name = names[i]
        batch = run.fetch(i, cycle_on_exhaust=False)
        while batch is not EXHAUSTED:
            run.step += 1
            yield name, batch
            try:
                batch = next(run.its[i])  # type: ignore[arg-type]
                run.consumed[i] += 1
            except StopIteration:
                batch = EXHAUSTED
        run.task += 1


def _size(name: Any, loader: Any) -> int | None:
    if not isinstance(name, str):
        raise TypeError(f"loaders keys must be task names (str), got {name!r}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"loaders[{name!r}] must be iterable, got {type(loader).__name__}")
    try:
        size = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if size == 0:
        raise ValueError(f"loaders[{name!r}] is empty (len 0)")
    return int(size)


def _check_temperature(mode: str, temperature: float | None) -> float | None:
    if mode != "temperature":
        if temperature is not None:
            raise ValueError(f"temperature is only used by mode='temperature', not {mode!r}")
        return None
    t = 2.0 if temperature is None else temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(t)


def _check_weights(
    mode: str, weights: Mapping[str, float] | None, names: tuple[str, ...]
) -> list[float] | None:
    if mode != "weighted":
        if weights is not None:
            raise ValueError(f"weights are only used by mode='weighted', not {mode!r}")
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"mode='weighted' needs weights={{task: weight}}, got {weights!r}")
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise ValueError(f"weights name unknown tasks {unknown}; tasks are {list(names)}")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"weights must cover every task (0 to never draw one); missing {missing}")
    out = []
    for n in names:
        w = weights[n]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{n!r}] must be a finite number >= 0, got {w!r}")
        out.append(float(w))
    if sum(out) <= 0:
        raise ValueError("weights must not all be 0")
    return out


def _check_steps(
    mode: str, steps: int | None, spec: ModeSpec, sizes: list[int | None]
) -> int | None:
    if steps is None:
        return spec.default_steps(sizes)
    if not spec.cycles:
        raise ValueError(f"steps_per_epoch does not apply to mode={mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps_per_epoch must be an int > 0, got {steps!r}")
    return steps


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj
