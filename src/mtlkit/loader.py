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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, get_args

from ._loader_checks import (
    check_steps,
    check_temperature,
    check_weights,
    copy_state,
    loader_size,
)
from ._loader_inner import set_inner_epoch
from ._loader_modes import MODES, ModeSpec, probabilities
from ._loader_run import VERSION, Run, interleaved, sampled, sequential

__all__ = ["Mode", "MultiTaskLoader"]

logger = logging.getLogger(__name__)

Mode = Literal[
    "interleaved", "round_robin", "proportional", "temperature", "weighted", "sequential"
]


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
    later cycles are fresh shuffles); the samplers' own ``torch.Generator`` (a
    ``DataLoader(generator=g)``, ``RandomSampler(generator=g)``, torchdata's sampler) is
    ``manual_seed``-ed from ``(seed, epoch, task, cycle)``, and the iterator is created with
    torch's CPU generator seeded from the same and restored afterwards, so a default
    ``RandomSampler`` also shuffles reproducibly and the global RNG is left as it was. With
    ``check_ranks`` (the default) the start of every epoch all-gathers the configuration and
    raises ``ValueError`` if the ranks disagree.

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
    exact when the inner loader is deterministic given its sampler epoch and the seeded
    generators (``DistributedSampler``, ``SequentialSampler``, ``RandomSampler`` with or without
    a generator); a sampler drawing randomness elsewhere needs a stateful loader.

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
        >>> from mtlkit import MultiTaskLoader
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
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(loaders, Mapping):
            raise TypeError(
                f"loaders must be a Mapping[str, Iterable], got {type(loaders).__name__}"
            )
        if len(loaders) == 0:
            raise ValueError("loaders must hold at least one task, got an empty mapping")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self._spec: ModeSpec = MODES[mode]
        self._mode = mode
        self._seed = seed
        self._names = tuple(loaders)
        self._loaders = tuple(loaders.values())
        self._sizes = [loader_size(name, dl) for name, dl in loaders.items()]
        self._check_ranks = bool(check_ranks)
        if self._spec.sizes_needed or (steps_per_epoch is None and self._spec.cycles):
            unsized = [n for n, s in zip(self._names, self._sizes, strict=True) if s is None]
            if unsized:
                raise ValueError(
                    f"mode={mode!r} needs len() of every loader (pass steps_per_epoch where the "
                    f"mode allows it); loaders without len(): {unsized}"
                )
        self._temperature = check_temperature(mode, temperature)
        self._weights = check_weights(mode, weights, self._names)
        self._steps = check_steps(mode, steps_per_epoch, self._spec, self._sizes)
        self._epoch = 0
        self._run: Run | None = None
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
            >>> from mtlkit import MultiTaskLoader
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
            >>> from mtlkit import MultiTaskLoader
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
        run = Run(self, self._epoch, pending)
        self._run = run
        return self._iterate(run)

    def _iterate(self, run: Run) -> Iterator[Any]:
        if self._check_ranks:
            run.check_ranks()
        if self._spec.yields_dict:
            yield from interleaved(run)
        elif self._spec.cycles:
            yield from sampled(run)
        else:
            yield from sequential(run)
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
            >>> from mtlkit import MultiTaskLoader
            >>> loader = MultiTaskLoader({"a": [1, 2, 3], "b": [4]}, mode="round_robin")
            >>> it = iter(loader); _ = next(it), next(it)
            >>> state = loader.state_dict(); state["epoch"], state["step"]
            (0, 2)
        """
        if self._pending is not None:
            return copy_state(self._pending)
        if self._run is not None:
            return self._run.state()
        return Run(self, self._epoch, None).state()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields the rest of its epoch.

        Example:
            >>> from mtlkit import MultiTaskLoader
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
        expected = {
            "version": VERSION,
            "mode": self._mode,
            "tasks": list(self._names),
            "seed": self._seed,
            "steps": self._steps,
        }
        for key, value in expected.items():
            if state_dict.get(key) != value:
                raise ValueError(
                    f"state_dict[{key!r}] is {state_dict.get(key)!r} but this loader has {value!r}"
                )
        if set(state_dict["loaders"]) != set(self._names):
            raise ValueError(f"state_dict['loaders'] must have the tasks {list(self._names)}")
        self._pending = copy_state(dict(state_dict))
        self._epoch = int(state_dict["epoch"])
        self._run = None
