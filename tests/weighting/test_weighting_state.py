"""State of the stateful weightings: state_dict round trips, reset, and checked loading."""

from __future__ import annotations

import logging

import pytest
import torch

from mtlkit import weighting

STATEFUL = {"pcgrad": {"seed": 3}, "random": {"seed": 3}, "gradvac": {"seed": 3, "beta": 0.3}}
STATELESS = ["upgrad", "dualproj", "mgda", "cagrad", "imtlg", "aligned_mtl", "config",
             "fairgrad", "nash_mtl", "mean", "sum"]


def _gramians(steps: int, num_tasks: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        jac = torch.randn(num_tasks, 10, generator=gen, dtype=torch.float64)
        jac[1] = -0.8 * jac[0] + 0.3 * jac[1]
        out.append(jac @ jac.T)
    return out


@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_dict_round_trip_resumes_exactly(name):
    grams = _gramians(6)
    first = weighting.by_name(name, **STATEFUL[name])
    for g in grams[:3]:
        first(g)
    state = first.state_dict()
    continued = [first(g) for g in grams[3:]]
    resumed = weighting.by_name(name, seed=99) if name != "gradvac" else weighting.GradVac(
        beta=0.3, seed=99)
    resumed.load_state_dict(state)
    for g, expected in zip(grams[3:], continued, strict=True):
        assert torch.equal(resumed(g), expected)


@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_dict_is_a_snapshot(name):
    method = weighting.by_name(name, **STATEFUL[name])
    grams = _gramians(3)
    method(grams[0])
    state = method.state_dict()
    snapshot = {k: None if v is None else v.clone() for k, v in state.items()}
    method(grams[1])
    for key, value in state.items():
        assert torch.equal(value, snapshot[key]), key


@pytest.mark.parametrize("name", list(STATEFUL))
def test_reset_restarts_from_the_seed(name):
    grams = _gramians(4)
    method = weighting.by_name(name, **STATEFUL[name])
    first = [method(g) for g in grams]
    method.reset()
    assert all(torch.equal(method(g), w) for g, w in zip(grams, first, strict=True))


@pytest.mark.parametrize("name", list(STATEFUL))
def test_loading_a_foreign_state_raises(name):
    method = weighting.by_name(name, **STATEFUL[name])
    with pytest.raises(ValueError, match=f"{type(method).__name__}: state: expected"):
        method.load_state_dict({"wrong": 1})


@pytest.mark.parametrize("name", STATELESS)
def test_stateless_weightings_have_an_empty_state(name):
    method = weighting.by_name(name)
    method(_gramians(1)[0])
    assert method.state_dict() == {}
    method.load_state_dict({})
    with pytest.raises(ValueError, match="expected an empty state"):
        method.load_state_dict({"x": 1})


def test_gradvac_restarts_its_targets_when_the_number_of_tasks_changes(caplog):
    vac = weighting.GradVac(seed=0)
    vac(_gramians(1, 3)[0])
    assert vac.targets.shape == (3, 3)
    with caplog.at_level(logging.WARNING, logger="mtlkit.weighting.gradvac"):
        vac(_gramians(1, 4)[0])
    assert vac.targets.shape == (4, 4)
    assert "4 tasks after 3" in caplog.text


def test_gradvac_targets_follow_the_moving_average():
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    vac = weighting.GradVac(beta=0.25, eps=0.0, seed=0)
    cosine = -(0.5**0.5)
    expected = 0.0
    for _ in range(3):
        vac(jac @ jac.T)
        expected = 0.75 * expected + 0.25 * cosine
        torch.testing.assert_close(vac.targets[0, 1], torch.tensor(expected, dtype=torch.float64))
