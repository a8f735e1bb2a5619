"""Two gloo ranks: the same task sequence at every step, disjoint data (DistributedSampler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

from mtlkit import MultiTaskLoader

SIZES = {"sst": 24, "qqp": 40, "sts": 8}  # items; every size divisible by 2 ranks x batch 2


def _loaders(rank: int) -> dict[str, DataLoader]:
    out = {}
    for t, (name, n) in enumerate(SIZES.items()):
        items = [1000 * t + k for k in range(n)]
        sampler = DistributedSampler(items, num_replicas=2, rank=rank, shuffle=True, seed=7)
        out[name] = DataLoader(items, batch_size=2, sampler=sampler)
    return out


def _worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # ranks' global RNGs differ; the loader must not care
        record: dict[str, object] = {}
        for mode in ("interleaved", "proportional", "temperature", "round_robin"):
            loader = MultiTaskLoader(_loaders(rank), mode=mode, seed=3)
            for epoch in (0, 1):
                loader.set_epoch(epoch)
                steps = []
                for step in loader:
                    pairs = step.items() if isinstance(step, dict) else [step]
                    steps.append([[task, batch.tolist()] for task, batch in pairs])
                record[f"{mode}/{epoch}"] = steps
        bad = MultiTaskLoader(_loaders(rank), mode="proportional", seed=rank)
        try:
            next(iter(bad))
            record["mismatch"] = "not detected"
        except ValueError as err:
            record["mismatch"] = str(err)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_same_tasks_disjoint_data(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for key in r0:
        if key == "mismatch":
            continue
        s0, s1 = r0[key], r1[key]
        assert len(s0) == len(s1) > 0, key
        # the same task(s) at every step on both ranks
        assert [[t for t, _ in step] for step in s0] == [[t for t, _ in step] for step in s1]
    for mode in ("proportional", "temperature", "round_robin", "interleaved"):
        for epoch in (0, 1):
            seen0 = [x for step in r0[f"{mode}/{epoch}"] for _, b in step for x in b]
            seen1 = [x for step in r1[f"{mode}/{epoch}"] for _, b in step for x in b]
            if mode == "proportional":  # one pass over every loader: a partition of the data
                everything = sorted(
                    1000 * t + k for t, n in enumerate(SIZES.values()) for k in range(n)
                )
                assert sorted(seen0 + seen1) == everything
            # a cycle of a DistributedSampler gives the ranks disjoint halves
            first_cycle = {name: n // 4 for name, n in SIZES.items()}
            for name, batches in first_cycle.items():
                b0 = [x for step in r0[f"{mode}/{epoch}"] for t, b in step if t == name for x in b][
                    : 2 * batches
                ]
                b1 = [x for step in r1[f"{mode}/{epoch}"] for t, b in step if t == name for x in b][
                    : 2 * batches
                ]
                assert set(b0).isdisjoint(b1), (mode, epoch, name)
    assert r0["interleaved/0"] != r0["interleaved/1"]  # set_epoch reshuffled the samplers
    assert "differs across ranks" in r0["mismatch"]
    assert "differs across ranks" in r1["mismatch"]
