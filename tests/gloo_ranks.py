"""Run a function on several gloo processes on CPU and collect what each rank returns.

The distributed tests compare what every rank computed with one process on the whole batch;
this is the spawning, timeout and collection they share.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RankBody = Callable[[int, int], dict[str, Any]]


def _entry(rank: int, world: int, init_method: str, out_dir: str, body: RankBody) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        torch.save(body(rank, world), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # leave together: a rank tearing down while the other still talks can abort
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: a gloo thread still joinable there aborts the process
    # ("terminate called without an active exception"), which once failed a loaded CI run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_ranks(body: RankBody, tmp: Path, world: int = 2, timeout: float = 180.0,
                 weights_only: bool = False) -> list[dict[str, Any]]:
    """``body(rank, world)`` on ``world`` gloo processes; the dict each returned, by rank.

    ``body`` must be a module-level function (the processes are spawned, so it is pickled).
    A rank that raises fails the test with its traceback; a hang fails it after ``timeout``.
    """
    context = mp.spawn(_entry, args=(world, f"file://{tmp / 'store'}", str(tmp), body),
                       nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} gloo workers did not finish within {timeout:.0f} s")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=weights_only) for r in range(world)]
