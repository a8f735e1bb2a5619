"""Multi-task steps across processes: 1 process vs 2 gloo processes on CPU, and bytes per step.

A small random BERT (hidden 128, 2 layers, 2 heads, intermediate 512, vocabulary 8000), three
heads (5-class CE, binary BCE, MSE), a separate forward per task, Adam, one torch thread per
process. The global batch is ``--batch`` rows per task: one process takes all of it, each of the
2 processes half (strong scaling). Methods:

* ``plain``: the summed loss, ``loss.backward()``; under 2 processes a DDP-wrapped model (DDP
  all-reduces every trainable parameter's gradient, P_all floats).
* ``pcgrad tasks``: ``PCGrad(sync="tasks")`` with the encoder as shared parameters, the forward
  and ``backward`` under ``model.no_sync()``; the T x P task gradients are averaged, then surgery.
* ``pcgrad aggregate``: ``PCGrad(sync="aggregate")``: surgery per rank, then the P combined ones.

Bytes per step are COMPUTED from T, P and the dtype (4 bytes for float32): plain DDP
``P_all * 4``; tasks ``(T * P + H) * 4``; aggregate ``(P + H) * 4`` (P the encoder, H the heads),
each the payload one rank puts into all-reduce (a ring all-reduce moves about twice that over
each link). The PCGrad rows are cross-checked against ``SurgeryStats.comm_bytes``, which the
library counts as it calls the collectives (that count also includes the small agreement
collectives: the signature, the reach flags and the T weights). No PyPI library does PCGrad
across processes (torchjd has no distributed mode), so plain DDP is the baseline.

Times are the median over steps of the slowest rank's step (ranks start each step together).
This machine has 2 CPU cores, shared with other work: 2 processes x 1 thread use both cores,
1 process x 1 thread one; on CPU, gloo's all-reduce runs through loopback TCP.

    python benchmarks/bench_ddp.py [--steps 6] [--warmup 2] [--batch 8]

The last line is ``ddp/pcgrad bytes tasks/aggregate: X.XX`` (about T = 3).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

TASKS = ("sst", "qqp", "sts")
SEQ, HIDDEN = 32, 128
METHODS = ("plain", "pcgrad tasks", "pcgrad aggregate")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size=8000, hidden_size=HIDDEN, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=512)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.heads = torch.nn.ModuleDict({"sst": torch.nn.Linear(HIDDEN, 5),
                                          "qqp": torch.nn.Linear(HIDDEN, 1),
                                          "sts": torch.nn.Linear(HIDDEN, 1)})

    def forward(self, batches: dict) -> dict[str, torch.Tensor]:
        losses = {}
        for task in TASKS:
            ids, y = batches[task]
            logits = self.heads[task](self.encoder(input_ids=ids).last_hidden_state[:, 0])
            if task == "sst":
                losses[task] = F.cross_entropy(logits, y)
            elif task == "qqp":
                losses[task] = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)
            else:
                losses[task] = F.mse_loss(logits.squeeze(-1), y)
        return losses


def make_batches(step: int, rows: int, rank: int, world: int) -> dict:
    g = torch.Generator().manual_seed(step)
    out = {}
    for task in TASKS:
        ids = torch.randint(1000, 8000, (rows, SEQ), generator=g)
        if task == "sst":
            y = torch.randint(0, 5, (rows,), generator=g)
        elif task == "qqp":
            y = torch.randint(0, 2, (rows,), generator=g).float()
        else:
            y = torch.rand(rows, generator=g) * 5
        share = rows // world
        out[task] = (ids[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
    return out


def sizes() -> dict[str, int]:
    net = Net()
    shared = sum(p.numel() for p in net.encoder.parameters())
    heads = sum(p.numel() for p in net.heads.parameters())
    return {"P": shared, "H": heads, "P_all": shared + heads}


def computed_bytes(method: str, world: int) -> int:
    from mtlkit.surgery._collectives import bytes_per_step

    if world == 1:
        return 0
    s = sizes()
    if method == "plain":
        return s["P_all"] * 4
    mode = method.split()[1]
    return bytes_per_step(mode, len(TASKS), s["P"], 4, s["H"])


def build(method: str, world: int):
    from mtlkit import PCGrad

    net = Net()
    model = DistributedDataParallel(net) if world > 1 else net
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    if method == "plain":
        def step(batches):
            adam.zero_grad()
            sum(model(batches).values()).backward()
            adam.step()
            return 0
        return step

    opt = PCGrad(adam, shared_params=list(net.encoder.parameters()), seed=0,
                 sync=method.split()[1])

    def step(batches):
        opt.zero_grad()
        if world > 1:
            with model.no_sync():  # the forward too: DDP must not reduce as well
                stats = opt.backward(model(batches))
        else:
            stats = opt.backward(model(batches))
        opt.step()
        return stats.comm_bytes
    return step


def run(rank: int, world: int, args) -> dict:
    torch.set_num_threads(1)
    steps = {m: build(m, world) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    sent: dict[str, int] = {}
    for r in range(args.warmup + args.steps):
        batches = make_batches(r, args.batch, rank, world)
        for m in METHODS:
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            sent[m] = steps[m](batches)
            took = torch.tensor([time.perf_counter() - start])
            if world > 1:
                dist.all_reduce(took, op=dist.ReduceOp.MAX)
            if r >= args.warmup:
                times[m].append(float(took))
    return {"median": {m: statistics.median(v) for m, v in times.items()}, "sent": sent}


def _worker(rank: int, world: int, init: str, out: str, args) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = run(rank, world, args)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def two_processes(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        mp.spawn(_worker, args=(2, f"file://{tmp}/store", out, args), nprocs=2)
        return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=8, help="global rows per task (even)")
    args = parser.parse_args()
    if args.batch % 2:
        parser.error("--batch must be even (2 processes take half each)")

    s = sizes()
    print(f"torch {torch.__version__}; 1 thread per process; this machine has 2 CPU cores "
          f"(shared with other jobs while this ran); T = {len(TASKS)}, shared P = {s['P']:,}, "
          f"heads H = {s['H']:,}, global batch {args.batch} per task\n")
    results = {1: run(0, 1, args), 2: two_processes(args)}
    print("| processes | method | step ms | x plain (same processes) | bytes/step (computed) "
          "| bytes/step (counted by PCGrad) |")
    print("|---:|---|---:|---:|---:|---:|")
    for world, result in results.items():
        med = result["median"]
        for m in METHODS:
            counted = "-" if m == "plain" else f"{result['sent'][m]:,}"
            print(f"| {world} | {m} | {med[m] * 1e3:.1f} | {med[m] / med['plain']:.2f} | "
                  f"{computed_bytes(m, world):,} | {counted} |")
    print()
    for m in METHODS:
        speedup = results[1]["median"][m] / results[2]["median"][m]
        print(f"{m}: 1 process / 2 processes step time = {speedup:.2f}")
    ratio = computed_bytes("pcgrad tasks", 2) / computed_bytes("pcgrad aggregate", 2)
    print(f"ddp/pcgrad bytes tasks/aggregate: {ratio:.2f}")


if __name__ == "__main__":
    main()
