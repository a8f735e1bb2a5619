"""Scale-free Gramians and safe ridges: the numerics every Gramian weighting shares.

All of it runs on the Gramian's device in float64 and never reads a tensor on the host: there
are no branches on values, only ``torch.where`` and fixed shapes.
"""

from __future__ import annotations

import functools

import torch

RIDGES = (0.0, 1e-12, 1e-9, 1e-6, 1e-3)
"""Ridge ladder (relative to the trace): the smallest rung that makes the Gramian safely positive
definite is added. 0 leaves a well-conditioned Gramian (smallest Cholesky pivot above
:data:`MIN_PIVOT`) exact, 1e-12 covers an exactly rank-deficient float64 Gramian, the larger
ones the slightly indefinite Gramians that float32 accumulation produces."""

MIN_PIVOT = 1e-10
"""Smallest squared Cholesky pivot (relative to the trace) accepted without a ridge."""


@functools.lru_cache(maxsize=64)
def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached tensor of ``values`` (never modify it): building one from host data on CUDA
    would copy, and a blocking host-to-device copy synchronises.

    Example:
        >>> constant((1.0, 2.0), torch.float64, torch.device("cpu"))
        tensor([1., 2.], dtype=torch.float64)
    """
    return torch.tensor(values, dtype=dtype, device=device)


def to_device(cpu_tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``cpu_tensor`` copied to ``device`` without a synchronisation (pinned, non-blocking).

    Example:
        >>> to_device(torch.arange(3), torch.device("cpu"))
        tensor([0, 1, 2])
    """
    if device.type == "cpu":
        return cpu_tensor
    return cpu_tensor.pin_memory().to(device, non_blocking=True)


def normalized(gramian: torch.Tensor) -> torch.Tensor:
    """``gramian`` in float64, symmetrised and divided by its trace (left at 0 when it is 0).

    Every method of this package is invariant to a common positive scale of the gradients, so
    working on ``G / tr(G)`` keeps entries near 1 whatever the gradients' scale (1e-10 or 1e10).

    Example:
        >>> normalized(torch.tensor([[4.0, 2.0], [2.0, 4.0]]))
        tensor([[0.5000, 0.2500],
                [0.2500, 0.5000]], dtype=torch.float64)
    """
    g = gramian.detach().to(torch.float64)
    g = (g + g.T) / 2
    trace = g.diagonal().sum()
    return g / torch.where(trace > 0, trace, torch.ones_like(trace))


def ridged(g: torch.Tensor, base: float = 0.0) -> torch.Tensor:
    """``g + (base + r) I`` with ``r`` the smallest rung of :data:`RIDGES` that keeps every
    squared Cholesky pivot of the sum above ``(base + r) / 2`` (above :data:`MIN_PIVOT` for
    ``base + r = 0``): a positive-definite matrix whose Cholesky factor is trustworthy, chosen
    on the device.

    Example:
        >>> q = ridged(torch.zeros(2, 2, dtype=torch.float64))     # a zero Gramian
        >>> bool(torch.linalg.cholesky_ex(q).info == 0)
        True
    """
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    rungs = base + constant(RIDGES, g.dtype, g.device)
    candidates = g + rungs[:, None, None] * eye
    factor, info = torch.linalg.cholesky_ex(candidates)
    pivots = factor.diagonal(dim1=-2, dim2=-1).square().amin(-1)
    floors = torch.where(rungs > 0, rungs / 2, MIN_PIVOT)
    ok = (info == 0) & (pivots >= floors)  # NaN pivots compare False
    ok = ok | (torch.arange(len(RIDGES), device=g.device) == len(RIDGES) - 1)
    first = ok.to(torch.int8).argmax().reshape(1)  # the first acceptable rung
    return candidates.index_select(0, first)[0]


def unit_gramian(gramian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cosine matrix of the gradients, their norms and which of them are non-zero.

    Returns ``(cosines, norms, nonzero)`` in float64: ``cosines[i, j] = G_ij / (|g_i| |g_j|)``,
    with the row and column of a zero gradient set to 0 (its unit vector is taken as 0). Norms
    are those of the trace-normalised Gramian, so only their ratios are meaningful.

    Example:
        >>> c, n, nz = unit_gramian(torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
        >>> c, nz
        (tensor([[1., 0.],
                [0., 0.]], dtype=torch.float64), tensor([ True, False]))
    """
    g = normalized(gramian)
    sq = g.diagonal().clamp_min(0)
    nonzero = sq > 1e-30
    norms = torch.where(nonzero, sq, torch.ones_like(sq)).sqrt()
    cosines = g / (norms[:, None] * norms[None, :])
    keep = nonzero[:, None] & nonzero[None, :]
    cosines = torch.where(keep, cosines, torch.zeros_like(cosines))
    return cosines, torch.where(nonzero, norms, torch.zeros_like(norms)), nonzero


def cholesky_solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^-1 rhs`` by two triangular solves.

    ``torch.cholesky_solve`` reads its error flags on the host (a synchronisation on CUDA);
    ``torch.linalg.solve_triangular`` does not.

    Example:
        >>> a = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
        >>> cholesky_solve(torch.linalg.cholesky(a), torch.tensor([[2.0], [1.0]], dtype=a.dtype))
        tensor([[0.5000],
                [0.0000]], dtype=torch.float64)
    """
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)


def damped_pinv_solve(a: torch.Tensor, b: torch.Tensor, rcond: float) -> torch.Tensor:
    """``A^+ b`` for a symmetric PSD ``A``, as ``(A + dI)^-1 A (A + dI)^-1 b``, ``d = rcond tr(A)``.

    Each eigen-direction of eigenvalue ``s`` is scaled by ``s / (s + d)^2``: ``1/s`` for
    ``s >> d`` and smoothly 0 for ``s << d``, so directions below the cutoff (rank deficiency,
    rounding noise) are dropped without the eigendecomposition that ``torch.linalg.pinv`` needs
    (and that synchronises with the host on CUDA).

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
        >>> damped_pinv_solve(a, torch.ones(2, dtype=torch.float64), 1e-12)
        tensor([0.5000, 0.0000], dtype=torch.float64)
    """
    d = rcond * a.diagonal().sum().clamp_min(torch.finfo(a.dtype).tiny)
    shifted = a + d * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    factor = torch.linalg.cholesky_ex(shifted).L
    x = cholesky_solve(factor, b.reshape(-1, 1))
    return cholesky_solve(factor, a @ x).reshape(b.shape)
