"""by_name, NAMES and the public names of mtlkit.weighting."""

from __future__ import annotations

import pytest

import mtlkit
from mtlkit import weighting

PLAN_NAMES = ("pcgrad", "upgrad", "dualproj", "mgda", "cagrad", "imtlg", "aligned_mtl", "config",
              "fairgrad", "nash_mtl", "gradvac", "mean", "sum", "random", "uncertainty", "dwa",
              "famo")


def test_names_are_the_plans():
    assert weighting.NAMES == PLAN_NAMES


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_by_name_builds_each_weighting(name):
    loss_based = name in ("uncertainty", "dwa", "famo")
    method = weighting.by_name(name)  # every name builds without options
    if loss_based:
        method = weighting.by_name(name, num_tasks=3)
    base = weighting.LossWeighting if loss_based else weighting.Weighting
    assert isinstance(method, base)
    assert method.requires_gramian is (base is weighting.Weighting)
    assert type(method).__name__ in weighting.__all__


def test_by_name_passes_options():
    assert weighting.by_name("cagrad", c=0.7).c == 0.7
    assert weighting.by_name("fairgrad", alpha=1.5).alpha == 1.5


@pytest.mark.parametrize("bad", ["UPGRAD", "nash-mtl", "nope", "", None])
def test_unknown_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"name: expected one of pcgrad, upgrad, .*famo, got"):
        weighting.by_name(bad)


def test_every_public_name_is_exported_and_documented():
    for name in weighting.__all__:
        obj = getattr(weighting, name)
        assert obj.__doc__ and ("Example" in obj.__doc__ or name == "NAMES"), name
    assert mtlkit.weighting is weighting
