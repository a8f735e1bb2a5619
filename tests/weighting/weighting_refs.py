"""Independent references for the weighting tests: naive NumPy/SciPy versions of each method.

They work on the Jacobian or on the Gramian with textbook formulations (explicit supports and
KKT systems, loops over tasks, SciPy's solvers), never with the library's code.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import minimize, root


def random_jacobian(gen: torch.Generator, num_tasks: int, dim: int = 12,
                    conflict: bool = True) -> torch.Tensor:
    """Random float64 gradients with spread norms; with ``conflict`` task 1 opposes task 0."""
    jac = torch.randn(num_tasks, dim, generator=gen, dtype=torch.float64)
    jac *= torch.exp(torch.randn(num_tasks, 1, generator=gen, dtype=torch.float64))
    if conflict and num_tasks > 1:
        jac[1] = -0.8 * jac[0] * jac[1].norm() / jac[0].norm() + 0.4 * jac[1]
    return jac


def box_qp(gram: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``argmin v^T G v  s.t.  v >= u`` by trying every set of tight bounds (KKT check)."""
    t = len(u)
    best, best_val = None, math.inf
    for tight in itertools.product([False, True], repeat=t):
        tight = np.array(tight)
        v = u.astype(float).copy()
        free = ~tight
        if free.any():
            # G_FF v_F = -G_FT u_T
            rhs = -gram[np.ix_(free, tight)] @ u[tight]
            v[free] = np.linalg.solve(gram[np.ix_(free, free)], rhs)
        grad = gram @ v
        feasible = (v >= u - 1e-9).all() and (grad[tight] >= -1e-9).all()
        val = v @ gram @ v
        if feasible and val < best_val:
            best, best_val = v, val
    assert best is not None
    return best


def upgrad(gram: np.ndarray) -> np.ndarray:
    t = len(gram)
    return sum(box_qp(gram, np.eye(t)[i] / t) for i in range(t))


def dualproj(gram: np.ndarray) -> np.ndarray:
    t = len(gram)
    return box_qp(gram, np.full(t, 1.0 / t))


def min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    """``argmin_{w in simplex} w^T G w`` by trying every support (KKT of the simplex QP)."""
    t = len(gram)
    best, best_val = None, math.inf
    for support in itertools.product([False, True], repeat=t):
        s = np.array(support)
        if not s.any():
            continue
        k = int(s.sum())
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = gram[np.ix_(s, s)]
        kkt[:k, k] = -1.0
        kkt[k, :k] = 1.0
        rhs = np.zeros(k + 1)
        rhs[k] = 1.0
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        w = np.zeros(t)
        w[s] = sol[:k]
        level = w @ gram @ w
        feasible = (w >= -1e-9).all() and ((gram @ w)[~s] >= level - 1e-9).all()
        if feasible and level < best_val:
            best, best_val = w, level
    assert best is not None
    return best


def cagrad(gram: np.ndarray, c: float) -> np.ndarray:
    """The paper's dual (Liu et al. 2021, eq. 4) by SciPy's SLSQP, then ``1/T + r w / |g_w|``."""
    t = len(gram)
    b = gram @ np.full(t, 1.0 / t)
    r = c * math.sqrt(np.full(t, 1.0 / t) @ b)
    res = minimize(
        lambda w: w @ b + r * math.sqrt(max(w @ gram @ w, 1e-300)),
        np.full(t, 1.0 / t),
        bounds=[(0, None)] * t,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    w = res.x
    return np.full(t, 1.0 / t) + r * w / math.sqrt(w @ gram @ w)


def imtlg_projections(jac: np.ndarray, update: np.ndarray) -> np.ndarray:
    """The projections ``u_i^T d`` of the update on the unit gradients."""
    return (jac / np.linalg.norm(jac, axis=1, keepdims=True)) @ update


def aligned_mtl(gram: np.ndarray) -> np.ndarray:
    """Senushkin et al. 2023, Algorithm 1, with NumPy's eigendecomposition."""
    t = len(gram)
    values, vectors = np.linalg.eigh(gram)
    keep = values > values.max() * t * np.finfo(np.float64).eps
    values, vectors = values[keep], vectors[:, keep]
    balance = math.sqrt(values.min()) * vectors @ np.diag(values ** -0.5) @ vectors.T
    return balance @ np.full(t, 1.0 / t)


def config_update(jac: np.ndarray) -> np.ndarray:
    """ConFIG's update from the Jacobian: ``x = pinv(U) 1``, length the projections' sum."""
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    x = np.linalg.pinv(units) @ np.ones(len(jac))
    x_unit = x / np.linalg.norm(x)
    return (jac @ x_unit).sum() * x_unit


def alpha_fair(gram: np.ndarray, alpha: float) -> np.ndarray:
    """``G w = w^(-1/alpha)``: SciPy's L-BFGS-B on the convex potential ``1/2 w^T G w -
    sum F(w_i)`` (``F' = w^(-1/alpha)``), polished by SciPy's root finder on the equation."""
    t = len(gram)
    def utility(w):
        return np.log(w) if alpha == 1.0 else w ** (1 - 1 / alpha) / (1 - 1 / alpha)

    res = minimize(lambda w: 0.5 * w @ gram @ w - utility(w).sum(), np.ones(t),
                   jac=lambda w: gram @ w - w ** (-1 / alpha), method="L-BFGS-B",
                   bounds=[(1e-12, None)] * t, options={"ftol": 1e-15, "gtol": 1e-12,
                                                        "maxiter": 10000})
    sol = root(lambda w: gram @ w - np.abs(w) ** (-1 / alpha), res.x, tol=1e-14).x
    residual = np.abs(gram @ sol / sol ** (-1 / alpha) - 1).max()
    assert residual < 1e-9, f"the reference did not converge (residual {residual})"
    return sol


def pcgrad_with_orders(jac: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """Textbook PCGrad on vectors: project each gradient off the original others, in order."""
    out = np.zeros(jac.shape[1])
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            dot = g @ jac[j]
            if dot < 0 and jac[j] @ jac[j] > 0:
                g = g - dot / (jac[j] @ jac[j]) * jac[j]
        out += g
    return out


def gradvac_step(jac: np.ndarray, orders: list[list[int]], targets: np.ndarray,
                 beta: float) -> tuple[np.ndarray, np.ndarray]:
    """One step of GradVac's Algorithm 1 on vectors; returns (update, new targets)."""
    targets = targets.copy()
    out = np.zeros(jac.shape[1])
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            phi = g @ jac[j] / (np.linalg.norm(g) * np.linalg.norm(jac[j]))
            hat = targets[i, j]
            if phi < hat:
                scale = np.linalg.norm(g) * (hat * math.sqrt(1 - phi**2)
                                             - phi * math.sqrt(1 - hat**2))
                g = g + scale / (np.linalg.norm(jac[j]) * math.sqrt(1 - hat**2)) * jac[j]
            targets[i, j] = (1 - beta) * hat + beta * phi
        out += g
    return out, targets


def replay_orders(seed: int, num_tasks: int, steps: int = 1) -> list[list[list[int]]]:
    """The visiting orders a generator seeded with ``seed`` draws: one randperm per task."""
    gen = torch.Generator().manual_seed(seed)
    all_steps = []
    for _ in range(steps):
        orders = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            perm = torch.randperm(num_tasks - 1, generator=gen).tolist()
            orders.append([others[k] for k in perm])
        all_steps.append(orders)
    return all_steps
