"""MultiTaskLoader defects found by using it adversarially (issue 20: #4, #6, #10, #13, and
non-finite ``weights``/``temperature``); each test failed before its fix."""

from __future__ import annotations

import gc
import itertools
import math
import multiprocessing
from collections import Counter
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from torch.utils.data import DataLoader

from mtlkit import MultiTaskLoader

WORKER_TIMEOUT = 60  # seconds a DataLoader waits for a worker's batch before failing the test


def shuffled(sizes: list[int]) -> dict[str, DataLoader]:
    return {
        "abc"[t]: DataLoader([1000 * t + k for k in range(n)], shuffle=True)
        for t, n in enumerate(sizes)
    }


def plain(step):
    if isinstance(step, dict):
        return {k: v.tolist() for k, v in step.items()}
    return (step[0], step[1].tolist())


def make(mode: str, carry_over: bool = False) -> MultiTaskLoader:
    kw = {"weights": {"a": 1.0, "b": 2.0, "c": 0.5}} if mode == "weighted" else {}
    return MultiTaskLoader(shuffled([5, 3, 2]), mode=mode, seed=7, carry_over=carry_over, **kw)


# -- #4: a full pass that ends without StopIteration -----------------------------------------
@pytest.mark.parametrize("carry_over", [False, True])
@pytest.mark.parametrize("mode", MultiTaskLoader.modes)
def test_full_pass_without_stop_iteration_advances_the_epoch(mode, carry_over):
    loader = make(mode, carry_over)
    n = len(loader)
    passes = [[plain(s) for s in itertools.islice(loader, n)]]
    assert loader.epoch == 1
    passes.append([plain(s) for _, s in zip(range(n), loader, strict=False)])
    passes.append([plain(s) for s in itertools.islice(loader, n)])
    assert loader.epoch == 3
    for epoch, steps in enumerate(passes):  # the same epochs as set_epoch gives
        reference = make(mode, carry_over)
        reference.set_epoch(epoch)
        assert steps == [plain(s) for s in reference]
    assert passes[0] != passes[1] != passes[2]


def test_state_after_the_last_step_resumes_an_empty_rest_then_the_next_epoch():
    loader = make("proportional")
    it = iter(loader)
    head = [plain(next(it)) for _ in range(len(loader))]
    state = loader.state_dict()
    assert (state["epoch"], state["step"], loader.epoch) == (0, len(loader), 1)
    resumed = make("proportional")
    resumed.load_state_dict(state)
    assert list(resumed) == []
    assert [plain(s) for s in resumed] == [plain(s) for s in loader]  # both run epoch 1
    assert head != [plain(s) for s in resumed]


# -- #6: tiny temperature, huge weights ------------------------------------------------------
def decimal_temperature_probabilities(sizes: list[int], temperature: str) -> list[float]:
    """p_t = n_t ** (1 / t) / sum(n ** (1 / t)) in 60-digit decimal arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 60
        power = Decimal(1) / Decimal(temperature)
        raw = [Decimal(n) ** power for n in sizes]
        return [float(r / sum(raw)) for r in raw]


def test_tiny_temperature_matches_a_high_precision_reference():
    sizes = [1000, 999, 10]  # 1000 ** 200 overflows a float
    loader = MultiTaskLoader(
        {t: range(n) for t, n in zip("abc", sizes, strict=True)},
        mode="temperature",
        temperature=0.005,
    )
    expected = decimal_temperature_probabilities(sizes, "0.005")
    assert list(loader.probabilities.values()) == pytest.approx(expected, rel=1e-12, abs=0)
    assert expected[2] == 0.0
    counts = Counter(t for t, _ in loader)  # sum(n) = 2009 draws
    assert counts["c"] == 0
    p = expected[0]
    assert abs(counts["a"] - 2009 * p) <= 5 * math.sqrt(2009 * p * (1 - p))


def test_huge_weights_give_their_ratio():
    weights = {"a": 1e308, "b": 1.5e308}  # their sum overflows a float
    loader = MultiTaskLoader(
        {"a": [0], "b": [1]}, mode="weighted", weights=weights, steps_per_epoch=4000
    )
    total = sum(Fraction(w) for w in weights.values())
    expected = {t: float(Fraction(w) / total) for t, w in weights.items()}
    assert loader.probabilities == pytest.approx(expected, rel=1e-15)
    counts = Counter(t for t, _ in loader)
    p = expected["b"]
    assert abs(counts["b"] - 4000 * p) <= 5 * math.sqrt(4000 * p * (1 - p))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_temperature_and_weights_are_rejected(value):
    with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0, got"):
        MultiTaskLoader({"a": [1]}, mode="temperature", temperature=value)
    with pytest.raises(ValueError, match=r"weights\['b'\]: expected a finite number >= 0, got"):
        MultiTaskLoader({"a": [1], "b": [2]}, mode="weighted", weights={"a": 1.0, "b": value})


# -- #10: a one-shot iterator that must restart ----------------------------------------------
def test_one_shot_iterator_that_must_be_cycled_says_it_cannot_restart():
    loader = MultiTaskLoader({"a": iter([1, 2]), "b": [1, 2, 3]}, steps_per_epoch=3)
    with pytest.raises(ValueError, match=r"loaders\['a'\]: expected an iterable that can be "
                       r"restarted .*got a one-shot list_iterator"):
        list(loader)


def test_one_shot_generator_runs_one_sequential_epoch_then_says_why_not_two():
    loader = MultiTaskLoader({"a": (x for x in [1, 2]), "b": [3]}, mode="sequential")
    assert list(loader) == [("a", 1), ("a", 2), ("b", 3)]
    with pytest.raises(ValueError, match="one-shot generator"):
        list(loader)


# -- #13: a dropped loader frees its workers without a garbage collection --------------------
def test_dropped_loader_shuts_its_worker_processes_down_at_once():
    before = set(multiprocessing.active_children())
    gc.disable()  # a reference cycle would keep the workers until a collection
    try:
        dl = DataLoader(range(8), batch_size=2, num_workers=1, timeout=WORKER_TIMEOUT,
                        multiprocessing_context="fork")
        loader = MultiTaskLoader({"a": dl, "b": [0, 1]})
        it = iter(loader)
        next(it)
        workers = [p for p in multiprocessing.active_children() if p not in before]
        assert workers
        del it, loader, dl
        for worker in workers:
            worker.join(timeout=10)
        assert [w.is_alive() for w in workers] == [False] * len(workers)
    finally:
        gc.enable()
