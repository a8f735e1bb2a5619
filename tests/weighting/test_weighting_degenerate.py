"""Degenerate Gramians (rank-deficient, zero rows, extreme scales, float32 rounding, exact
cancellation) give finite weights, and bad input gives a clear error."""

from __future__ import annotations

import pytest
import torch

from mtlkit import weighting

GRAMIAN_NAMES = [n for n in weighting.NAMES
                 if n not in ("uncertainty", "dwa", "famo")]
UNIT_BASED = ("imtlg", "config", "nash_mtl", "fairgrad")  # a zero gradient gets weight 0


def _base(num_tasks: int = 4, dim: int = 16, seed: int = 0) -> torch.Tensor:
    jac = torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    jac[1] = -0.7 * jac[0] + 0.3 * jac[1]
    return jac


def _degenerate_jacobians() -> dict[str, torch.Tensor]:
    jac = _base()
    duplicate = jac.clone()
    duplicate[2] = duplicate[1]
    zero_row = jac.clone()
    zero_row[3] = 0
    low_rank = _base(5, 2)
    per_task = jac * torch.tensor([1e-5, 1.0, 1e5, 1e-2], dtype=torch.float64)[:, None]
    cancel = jac.clone()
    cancel[1] = -cancel[0]
    return {
        "duplicate rows": duplicate,
        "zero row": zero_row,
        "all zero": torch.zeros(3, 8, dtype=torch.float64),
        "rank 2 of 5": low_rank,
        "tiny (G ~ 1e-10)": jac * 1e-5,
        "huge (G ~ 1e10)": jac * 1e5,
        "norms 1e-5 to 1e5": per_task,
        "exact cancellation": cancel,
    }


CASES = _degenerate_jacobians()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_degenerate_gramians_give_finite_weights(name, case):
    jac = CASES[case]
    w = weighting.by_name(name)(jac @ jac.T)
    assert w.shape == (jac.shape[0],) and w.dtype == jac.dtype
    assert torch.isfinite(w).all(), (name, case, w)
    assert torch.isfinite(w @ jac).all()


@pytest.mark.parametrize("name", UNIT_BASED)
def test_a_zero_gradient_gets_weight_zero(name):
    jac = CASES["zero row"]
    w = weighting.by_name(name)(jac @ jac.T)
    assert float(w[3]) == 0.0
    # and the other tasks get what they get without the zero task
    w_rest = weighting.by_name(name)(jac[:3] @ jac[:3].T)
    torch.testing.assert_close(w[:3], w_rest, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_all_zero_gradients_give_a_zero_update(name):
    jac = CASES["all zero"]
    assert float((weighting.by_name(name)(jac @ jac.T) @ jac).abs().max()) == 0.0


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda", "cagrad", "imtlg", "config",
                                  "aligned_mtl", "nash_mtl", "fairgrad"])
def test_extreme_common_scales_give_the_same_update_direction(name):
    jac = _base()
    method = weighting.by_name(name)
    reference = method(jac @ jac.T) @ jac
    for scale in (1e-5, 1e5):  # Gramians of order 1e-10 and 1e10
        scaled = jac * scale
        d = method(scaled @ scaled.T) @ scaled
        cosine = float(d @ reference / (d.norm() * reference.norm()))
        assert cosine > 1 - 1e-9, (name, scale)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
def test_non_conflict_survives_norms_from_1e_minus_5_to_1e5(name):
    jac = CASES["norms 1e-5 to 1e5"]
    d = weighting.by_name(name)(jac @ jac.T) @ jac
    cosines = (jac @ d) / (jac.norm(dim=1) * d.norm())
    assert float(cosines.min()) >= -1e-6  # relative to each task's own scale


@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_a_float32_gramian_with_rounding_noise(name):
    """float32 accumulation makes a Gramian slightly indefinite: the ridge ladder copes."""
    jac = _base(6, 3).float()  # rank 3 of 6: the float32 Gramian's zero eigenvalues are noise
    gram = jac @ jac.T
    assert float(torch.linalg.eigvalsh(gram.double())[0]) != 0.0
    w = weighting.by_name(name)(gram)
    assert w.dtype == torch.float32 and torch.isfinite(w).all()


def test_identical_tasks_share_the_weight():
    """Identical gradients: any split of their weight gives the same update; the ridge picks
    the even split, up to its conditioning (1e-12: MGDA's split is even to 1e-4)."""
    g = _base(2)[:1]
    jac = torch.cat([g, g])
    for name in ("upgrad", "dualproj", "mgda", "imtlg", "nash_mtl", "aligned_mtl", "config"):
        w = weighting.by_name(name)(jac @ jac.T)
        torch.testing.assert_close(w[0], w[1], rtol=1e-4, atol=1e-12)


# ------------------------------------------------------------ bad input


BAD_GRAMIANS = {
    "non-square": torch.ones(2, 3),
    "not a matrix": torch.ones(3),
    "empty": torch.ones(0, 0),
    "non-symmetric": torch.tensor([[1.0, 0.5], [0.0, 1.0]]),
    "non-finite": torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]),
    "infinite": torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]),
    "integer": torch.eye(2, dtype=torch.long),
}


@pytest.mark.parametrize("bad", list(BAD_GRAMIANS))
@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_bad_gramians_raise_naming_the_weighting(name, bad):
    method = weighting.by_name(name)
    with pytest.raises(ValueError, match=type(method).__name__ + ": gramian: expected"):
        method(BAD_GRAMIANS[bad])


def test_a_list_is_not_a_gramian():
    with pytest.raises(ValueError, match="UPGrad: gramian: expected a floating-point tensor"):
        weighting.UPGrad()([[1.0]])


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (weighting.CAGrad, {"c": -0.1}, "CAGrad: c: expected a number >= 0"),
    (weighting.CAGrad, {"c": "big"}, "CAGrad: c: expected a number >= 0"),
    (weighting.UPGrad, {"reg_eps": -1.0}, "UPGrad: reg_eps: expected a number >= 0"),
    (weighting.DualProj, {"reg_eps": float("nan")}, "DualProj: reg_eps: expected"),
    (weighting.FairGrad, {"alpha": -1.0}, "FairGrad: alpha: expected 0 or a number in"),
    (weighting.FairGrad, {"alpha": 11.0}, "FairGrad: alpha: expected 0 or a number in"),
    (weighting.FairGrad, {"alpha": float("inf")}, "FairGrad: alpha: expected 0 or a number"),
    (weighting.NashMTL, {"max_norm": 0.0}, "NashMTL: max_norm: expected None or a number > 0"),
    (weighting.GradVac, {"beta": 1.5}, "GradVac: beta: expected a number in \\[0, 1\\]"),
    (weighting.GradVac, {"eps": -1e-8}, "GradVac: eps: expected a number >= 0"),
])
def test_bad_options_raise(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_fairgrad_alpha_zero_is_the_mean():
    jac = _base()
    torch.testing.assert_close(weighting.FairGrad(0.0)(jac @ jac.T),
                               torch.full((4,), 0.25, dtype=torch.float64))
