"""The hot path reads nothing on the host: no ``.item()`` (``_local_scalar_dense``) inside
``weights()``, whatever the op (PyTorch's linalg error checks included), and, on CUDA, no
synchronisation at all (``torch.cuda.set_sync_debug_mode("error")``)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mtlkit import weighting

GRAMIAN_NAMES = [n for n in weighting.NAMES if n not in ("uncertainty", "dwa", "famo")]
EIGH = {"aligned_mtl"}  # torch.linalg.eigh checks its error flags on the host (documented)


def _gramian(num_tasks: int, device: str = "cpu") -> torch.Tensor:
    jac = torch.randn(num_tasks, 32, generator=torch.Generator().manual_seed(num_tasks))
    jac[1] -= 0.8 * jac[0]
    return (jac @ jac.T).to(device)


def _host_reads(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name in ("aten::_local_scalar_dense", "aten::item") for e in prof.events())


@pytest.mark.parametrize("num_tasks", [3, 12])  # 12: the pivoting solver, not the enumeration
@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_weights_never_read_a_tensor_on_the_host(name, num_tasks):
    method = weighting.by_name(name)
    gram = _gramian(num_tasks)
    method.weights(gram)  # warm-up: lazy state and caches
    reads = _host_reads(lambda: method.weights(gram))
    assert reads == (2 if name in EIGH else 0), name


def test_the_check_does_read_on_the_host():
    """The counter itself works: calling the instance checks the Gramian on the host."""
    method = weighting.Mean()
    assert _host_reads(lambda: method(_gramian(3))) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(set(GRAMIAN_NAMES) - EIGH))
def test_weights_do_not_synchronise_on_cuda(name):
    method = weighting.by_name(name)
    gram = _gramian(5, "cuda")
    method.weights(gram)
    twin = weighting.by_name(name)  # the same state, to redo the call on the CPU
    twin.load_state_dict(method.state_dict())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = method.weights(gram)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert w.device.type == "cuda"
    torch.testing.assert_close(w.cpu(), twin.weights(gram.cpu()), rtol=1e-5, atol=1e-7)
