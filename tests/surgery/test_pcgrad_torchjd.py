"""PCGrad against an external implementation: torchjd's PCGrad aggregator on the same Jacobian.

With two tasks the visiting order does not matter, so the results must agree exactly (up to
rounding) whatever either library's generator draws.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchjd.aggregation import PCGrad as TorchJDPCGrad

from mtlkit import PCGrad

rows = st.lists(st.floats(-100, 100, allow_nan=False, width=64), min_size=5, max_size=5)


def mtlkit_pcgrad(jacobian: torch.Tensor, seed: int) -> torch.Tensor:
    theta = torch.zeros(jacobian.shape[1], dtype=jacobian.dtype, requires_grad=True)
    opt = PCGrad(torch.optim.SGD([theta], lr=1.0), seed=seed)
    opt.backward([theta @ row for row in jacobian])
    return theta.grad


def test_a_conflicting_pair_matches_torchjd():
    jacobian = torch.tensor([[1.0, 2.0, -1.0], [-2.0, 0.5, 1.0]], dtype=torch.float64)
    want = TorchJDPCGrad()(jacobian)
    torch.testing.assert_close(mtlkit_pcgrad(jacobian, 0), want)
    assert not torch.allclose(want, jacobian.sum(0))  # the projection acted


@settings(max_examples=80, deadline=None)
@given(rows, rows, st.integers(0, 2**31 - 1))
def test_property_two_tasks_match_torchjd(a, b, seed):
    jacobian = torch.tensor([a, b], dtype=torch.float64)
    # torchjd divides by the squared norm, where mtlkit never projects on a zero gradient
    assume(bool((jacobian.norm(dim=1) > 1e-6).all()))
    want = TorchJDPCGrad()(jacobian)
    torch.testing.assert_close(mtlkit_pcgrad(jacobian, seed), want, rtol=1e-9, atol=1e-9)
