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


def scaled_gramian(gramian: torch.Tensor, reg_eps: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gramian in the coordinates ``x = D v`` (``D`` the gradient norms): ``G = D C D``.

    Returns ``(c_mat, scales, nonzero)``: ``c_mat`` the cosine matrix, positive definite (a
    zero gradient's row and column replaced by the identity's, then :func:`ridged` on the
    unit-diagonal matrix, so that a ridge is relative to each task's own scale), ``scales``
    the norms of the trace-normalised Gramian (1 for a zero gradient) and ``nonzero``.
    ``reg_eps`` is a ridge on the trace-normalised Gramian (``G/tr + reg_eps I``), carried
    over exactly as ``reg_eps / scales^2`` on ``c_mat``'s diagonal.

    Quadratic programs with box or sign constraints keep their form under this positive
    diagonal change of variables, and solving them on ``c_mat`` keeps tasks whose gradient
    norms differ by many orders of magnitude exact.

    Example:
        >>> c, d, nz = scaled_gramian(torch.tensor([[4.0, 0.0], [0.0, 1e-12]]))
        >>> torch.allclose(c, torch.eye(2, dtype=torch.float64)), d     # scales 1 and 5e-7
        (True, tensor([1.0000e+00, 5.0000e-07], dtype=torch.float64))
    """
    cosines, norms, nonzero = unit_gramian(gramian)
    num_tasks = gramian.shape[0]
    keep = nonzero[:, None] & nonzero[None, :]
    eye = torch.eye(num_tasks, dtype=cosines.dtype, device=cosines.device)
    scales = torch.where(nonzero, norms, torch.ones_like(norms))
    c_mat = torch.where(keep, cosines, eye)
    if reg_eps:
        c_mat = c_mat + torch.diag(torch.where(nonzero, reg_eps / scales.square(), 0.0))
    c_mat = ridged(c_mat / num_tasks) * num_tasks
    return c_mat, scales, nonzero


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


def pinv_solve(a: torch.Tensor, b: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``A^+ b`` for a symmetric PSD ``A``, with the eigen-directions far below ``cutoff``
    dropped smoothly and without an eigendecomposition.

    Tikhonov regularisation, ``y0 = argmin |A y - b|^2 + d^2 |y|^2`` (``d = cutoff``, solved by
    QR of ``[A; d I]``, whose condition number is about ``|A| / d``, not its square), then one
    refinement step on the residual: an eigen-direction of eigenvalue ``s`` is scaled by
    ``(1 - (d^2 / (s^2 + d^2))^2) / s``, i.e. ``1/s`` up to a relative ``(d/s)^4`` for
    ``s >> d`` and ``2 s / d^2`` (nearly 0) for ``s << d``. ``torch.linalg.pinv`` would need
    ``eigh``, which synchronises with the host on CUDA, and its hard cutoff inverts rounding
    noise just above it.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
        >>> y = pinv_solve(a, torch.ones(2, dtype=torch.float64), 1e-6)
        >>> torch.allclose(y, torch.tensor([0.5, 0.0], dtype=torch.float64))
        True
    """
    n = a.shape[0]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    q, r = torch.linalg.qr(torch.cat([a, cutoff * eye]))
    q_top = q[:n]  # [A; dI] y ~ [b; 0]: only the top block of Q meets the right-hand side

    def tikhonov(rhs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(r, q_top.T @ rhs, upper=True)

    b = b.reshape(-1, 1)
    y = tikhonov(b)
    y = y + tikhonov(b - a @ y)
    return y.reshape(-1)


def pinv_cutoff(num_tasks: int, dtype: torch.dtype) -> float:
    """The eigenvalue cutoff of :func:`pinv_solve` on a T x T cosine matrix whose entries carry
    the rounding of ``dtype``: ``30 T max(eps, sqrt(eps_64))``, well above the rounding noise
    of the eigenvalues (about ``T eps`` each) and of the float64 solve: 4.5e-6 for T = 10 in
    float64, 3.6e-5 in float32. (``sqrt(eps)`` of float32, 0.1 at T = 10, would damp real
    directions: a pair of gradients at cosine 0.99 gives an eigenvalue of 0.01.)

    Example:
        >>> round(pinv_cutoff(10, torch.float64), 8), round(pinv_cutoff(10, torch.float32), 7)
        (4.47e-06, 3.58e-05)
    """
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float64).eps ** 0.5)
    return 30.0 * num_tasks * eps
