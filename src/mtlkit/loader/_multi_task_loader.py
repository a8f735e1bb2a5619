"""Private: :class:`MultiTaskLoader`, one DataLoader per task combined by a registry mode."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, get_args

from mtlkit.loader import _checks
from mtlkit.loader._inner import set_inner_epoch
from mtlkit.loader._modes import Mode
from mtlkit.loader._run import EpochRun
from mtlkit.loader._state import checked_state, copy_state
from mtlkit.loader._streams import TaskStreams, replayed_positions

logger = logging.getLogger("mtlkit.loader")


class MultiTaskLoader:
    """Combine one loader per task into a multi-task epoch.

    Each task keeps its own loader (batch size, ``collate_fn``, sampler, workers); any re-iterable
    works, a :class:`torch.utils.data.DataLoader` being the usual one. ``mode`` decides a step:

    * ``"interleaved"`` (the paper's): a dict ``{task: batch}`` with one batch of every task;
      ``max(len)`` steps; a smaller loader restarts (a fresh shuffle) each time it runs out.
    * ``"round_robin"``: ``(task, batch)``, the tasks in a fixed cyclic order; ``T * max(len)``.
    * ``"proportional"``: ``(task, batch)``, task ``t`` drawn with probability ``n_t / sum(n)``
      *without replacement*: ``sum(len)`` steps hold every batch of every loader once.
    * ``"temperature"``: ``(task, batch)``, independent draws with probability proportional to
      ``n_t ** (1 / temperature)``; ``sum(len)`` steps.
    * ``"weighted"``: like ``"temperature"`` with the probabilities given by ``weights``.
    * ``"sequential"``: ``(task, batch)``, every batch of the first task, then the next (the
      paper's baseline); ``sum(len)`` steps.

    ``steps_per_epoch`` sets the epoch length of every mode but ``"sequential"``.

    The task drawn at each step is a function of ``(seed, epoch)`` alone, so every DDP rank draws
    the same task (give each task loader a :class:`~torch.utils.data.DistributedSampler` for
    disjoint data); ``check_ranks`` verifies it at the start of every epoch. Each (re)start of an
    inner loader calls ``set_epoch`` on its samplers and re-seeds their generators from the seed,
    the task and the pass, so shuffles are reproducible and the global RNG is left alone.

    Epochs: the epoch advances when its last step is yielded (as a plain DataLoader reshuffles
    for every new ``iter()``, also after ``itertools.islice(loader, len(loader))``);
    :meth:`set_epoch` sets it. With ``carry_over=False`` every epoch restarts every task; with
    ``carry_over=True`` a task whose pass is unfinished when an epoch ends continues that pass
    (no restart, no reshuffle) in the next one, and pass ``p`` of a task (counted from epoch 0)
    gives its samplers ``set_epoch(p)``. Either way epoch ``e`` is the same whether it is reached
    by iterating or by ``set_epoch(e)``.

    Resuming: after :meth:`load_state_dict` the next iteration yields exactly the rest of the
    interrupted epoch. Inner loaders with their own ``state_dict`` (torchdata's
    ``StatefulDataLoader``) are restored from it; a plain ``DataLoader`` over a map-style dataset
    (any number of workers) skips the consumed batches at the sampler level, loading nothing;
    other loaders have them read and discarded. See :doc:`/guides/loader`.

    Args:
        loaders: ``{task: loader}``; the order of the mapping is the task order.
        mode: one of :data:`MultiTaskLoader.modes`.
        seed: seeds the task schedule and the inner loaders' restarts.
        temperature: for ``mode="temperature"`` (default 2.0); finite and > 0.
        weights: for ``mode="weighted"``: ``{task: weight}`` covering every task, finite, >= 0.
        steps_per_epoch: epoch length override (not for ``"sequential"``).
        check_ranks: verify across DDP ranks that the configuration and position agree.
        carry_over: continue unfinished passes across epochs (needs ``len()`` of every loader).

    Raises:
        ValueError: unknown mode, empty mapping, empty loader, a loader without ``len()`` where
            one is needed, bad ``weights``/``temperature``/``steps_per_epoch``.
        TypeError: ``loaders`` not a mapping of ``str`` to iterables, ``seed`` not an int.

    Example:
        >>> from mtlkit import MultiTaskLoader
        >>> loader = MultiTaskLoader({"sst": ["s0", "s1"], "qqp": ["q0", "q1", "q2"]})
        >>> len(loader), list(loader)[2]
        (3, {'sst': 's0', 'qqp': 'q2'})
        >>> rr = MultiTaskLoader({"sst": ["s0"], "qqp": ["q0", "q1"]}, mode="round_robin")
        >>> list(rr)
        [('sst', 's0'), ('qqp', 'q0'), ('sst', 's0'), ('qqp', 'q1')]
        >>> carried = MultiTaskLoader({"sst": ["s0", "s1"], "qqp": ["q0", "q1", "q2"]},
        ...                           carry_over=True)
        >>> [step["sst"] for step in carried], [step["sst"] for step in carried]
        (['s0', 's1', 's0'], ['s1', 's0', 's1'])
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
        carry_over: bool = False,
    ) -> None:
        self._spec, probs = _checks.checked_spec(
            loaders, mode, seed, temperature, weights, steps_per_epoch, carry_over
        )
        self._probabilities = probs
        self._check_ranks = bool(check_ranks)
        self._epoch = 0
        self._run: EpochRun | None = None  # the running (or just finished) epoch
        self._pending: dict[str, Any] | None = None  # a loaded state, until iterated
        # carry_over: (the epoch it continues into, the finished run's streams)
        self._carried: tuple[int, TaskStreams] | None = None
        self._replayed: tuple[int, list[tuple[int, int]]] | None = None

    # -- public properties -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The mode this loader was built with."""
        return self._spec.mode

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names, in order."""
        return self._spec.names

    @property
    def carry_over(self) -> bool:
        """Whether unfinished passes continue into the next epoch."""
        return self._spec.carry_over

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs (or the running one, until its last step)."""
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
        return None if self._probabilities is None else dict(self._probabilities)

    def __len__(self) -> int:
        """Steps in one epoch; ``TypeError`` when unknown (a sequential unsized loader)."""
        if self._spec.steps is None:
            spec = self._spec
            unsized = [n for n, size in zip(spec.names, spec.sizes, strict=True) if size is None]
            raise TypeError(
                f"len() is undefined for mode='sequential' over loaders without len(): {unsized}"
            )
        return self._spec.steps

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next; without ``carry_over``, call ``set_epoch(epoch)`` on every inner
        sampler now (with it, each pass sets its own sampler epoch).

        A state loaded with :meth:`load_state_dict` for another epoch is dropped.

        Example:
            >>> from mtlkit import MultiTaskLoader
            >>> loader = MultiTaskLoader({"a": [1, 2], "b": [3]}, mode="proportional")
            >>> loader.set_epoch(3)
            >>> loader.epoch
            3
        """
        epoch = _checks.check_epoch(epoch)
        if self._pending is not None and self._pending["epoch"] != epoch:
            logger.info(
                "set_epoch(%d) drops the loaded state of epoch %d", epoch, self._pending["epoch"]
            )
            self._pending = None
        if self._run is not None and self._run.finished:
            self._run = None
        if self._carried is not None and self._carried[0] != epoch:
            self._carried = None
        self._epoch = epoch
        if not self._spec.carry_over:
            for dl in self._spec.loaders:
                set_inner_epoch(dl, epoch)

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        if pending is None:
            run = self._fresh_run(self._epoch, take_carried=True)
        else:
            self._epoch = pending["epoch"]
            streams = self._spec.new_streams(self._epoch)
            streams.restore(pending["loaders"])
            run = EpochRun(
                self._spec, self._epoch, streams, self._spec.new_draw(),
                step=pending["step"], task=pending.get("task", 0), draw_state=pending["schedule"],
            )
        self._run = run
        return self._iterate(run)

    def _iterate(self, run: EpochRun) -> Iterator[Any]:
        if self._check_ranks:
            run.check_ranks()
        finish = functools.partial(self._finish, run)
        if run.step == run.steps:  # a state saved after the epoch's last step
            finish()
        yield from run.draw.iterate(run, finish)
        finish()  # a sequential run over unsized loaders knows its end only here
        if self._run is run:
            self._run = None

    def _finish(self, run: EpochRun) -> None:
        """The last step of ``run`` is being yielded: the next iteration runs the next epoch."""
        if run.finished or self._run is not run:
            return
        run.finished = True
        if self._epoch == run.epoch:
            self._epoch = run.epoch + 1
        if self._spec.carry_over:
            self._carried = (run.epoch + 1, run.streams)

    # -- runs and streams --------------------------------------------------------------------
    def _fresh_run(self, epoch: int, take_carried: bool) -> EpochRun:
        """A run from the start of ``epoch``: streams carried from the last one, or replayed."""
        carried = self._carried
        if carried is not None and carried[0] == epoch:
            streams = carried[1]
            if streams.epoch != epoch:  # positions at the end of the last epoch: carry them
                streams.next_epoch(self._spec.sizes)
            if take_carried:
                self._carried = None
        elif self._spec.carry_over:
            streams = self._spec.new_streams(epoch, self._replay_positions(epoch))
        else:
            streams = self._spec.new_streams(epoch)
        return EpochRun(self._spec, epoch, streams, self._spec.new_draw())

    def _replay_positions(self, epoch: int) -> list[tuple[int, int]]:
        if self._replayed is None or self._replayed[0] != epoch:
            spec = self._spec
            positions = replayed_positions(self._spec.new_draw(), spec.sizes, spec.steps, epoch)
            self._replayed = (epoch, positions)
        return self._replayed[1]

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
        return self._fresh_run(self._epoch, take_carried=False).state()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields the rest of its epoch.

        A state of an earlier version of this class is upgraded.

        Example:
            >>> from mtlkit import MultiTaskLoader
            >>> make = lambda: MultiTaskLoader({"a": [1, 2, 3], "b": [4]}, mode="proportional")
            >>> loader = make(); it = iter(loader); head = [next(it) for _ in range(2)]
            >>> resumed = make(); resumed.load_state_dict(loader.state_dict())
            >>> head + list(resumed) == list(make())
            True
        """
        self._pending = checked_state(state_dict, self._spec.identity())
        self._epoch = self._pending["epoch"]
        self._run = None
        self._carried = None
