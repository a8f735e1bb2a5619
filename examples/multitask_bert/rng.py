"""The random state a checkpoint carries, per rank under torchrun, so ``--resume`` draws
the dropout masks (and SMART noise) an uninterrupted run would have drawn."""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from .distributed import DistEnv, all_gather_objects

logger = logging.getLogger(__name__)


def capture_rng(env: DistEnv) -> dict[str, Any]:
    """``{"torch": rank 0's CPU RNG, "torch_per_rank": ranks 1.., "python": ...}``, plus
    ``"cuda"`` / ``"cuda_per_rank"`` on a CUDA device (a collective under torchrun: every
    rank must call it).

    >>> state = capture_rng(DistEnv())
    >>> sorted(state), state["torch_per_rank"]
    (['python', 'torch', 'torch_per_rank'], [])
    """
    cuda = env.device.type == "cuda"
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state(env.device) if cuda else None)
    rngs = all_gather_objects(mine, env)
    out = {"torch": rngs[0][0], "torch_per_rank": [r[0] for r in rngs[1:]],
           "python": random.getstate()}
    if cuda:
        out.update(cuda=rngs[0][1], cuda_per_rank=[r[1] for r in rngs[1:]])
    return out


def restore_rng(state: dict[str, Any], env: DistEnv) -> None:
    """Set this rank's RNGs from :func:`capture_rng`'s output (as read from JSON).

    >>> s = capture_rng(DistEnv()); a = torch.rand(1)
    >>> restore_rng(s, DistEnv()); bool(torch.rand(1) == a)
    True
    """
    per_rank = [state["torch"], *state.get("torch_per_rank", [])]
    if len(per_rank) != env.world:
        logger.warning("the checkpoint was written by %d process(es), this run has %d: "
                       "dropout RNG streams differ from an uninterrupted run",
                       len(per_rank), env.world)
    torch.set_rng_state(per_rank[env.rank % len(per_rank)])
    if "cuda" in state and env.device.type == "cuda":
        cuda = [state["cuda"], *state.get("cuda_per_rank", [])]
        torch.cuda.set_rng_state(cuda[env.rank % len(cuda)], env.device)
    random.setstate(_tuples(state["python"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
