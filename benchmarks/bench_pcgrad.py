"""PCGrad step time and peak memory: plain summed loss vs mtlkit vs torchjd, side by side.

A randomly initialised BERT (hidden 256, 4 layers, 4 heads, intermediate 1024), three heads
(5-class CE, binary BCE, MSE), batch 16 per task, sequence length 64, Adam, CPU, 2 threads.
Two layouts: S, a separate forward per task (the pipeline's case), and C, one forward over the
concatenated batch (``mtlkit-stacked``: inside ``opt.stacked``, one backward split by rows).
Times are medians over rounds that run every method once each, so that load from other
processes hits all methods alike; memory is the peak RSS growth (VmHWM) of a
fresh process per method over its training steps (optimizer state included).

    python benchmarks/bench_pcgrad.py [--steps 12] [--warmup 3] [--threads 2]

The last line is ``pcgrad/plain (S): X.XX``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

TASKS = ("sst", "qqp", "sts")
BATCH, SEQ, THREADS = 16, 64, 2
HEAD_SIZES = {"sst": 5, "qqp": 1, "sts": 1}


def kind(task: str) -> str:
    """A task's kind ("sst", "qqp" or "sts") from its name ("sts" or "sts_2")."""
    return task.split("_")[0]


def use_tasks(num_tasks: int) -> None:
    """Run with ``num_tasks`` tasks, cycling through the three kinds (sst, qqp, sts, sst_2...)."""
    global TASKS
    kinds = ("sst", "qqp", "sts")
    TASKS = tuple(kinds[i % 3] + (f"_{i // 3 + 1}" if i >= 3 else "") for i in range(num_tasks))


def make_model(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024)
    encoder = BertModel(config, add_pooling_layer=False)
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(256, HEAD_SIZES[kind(t)]) for t in TASKS})
    return encoder, heads


def make_batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batches = {}
    for task in TASKS:
        ids = torch.randint(1000, 30000, (BATCH, SEQ), generator=g)
        if kind(task) == "sst":
            y = torch.randint(0, 5, (BATCH,), generator=g)
        elif kind(task) == "qqp":
            y = torch.randint(0, 2, (BATCH,), generator=g).float()
        else:
            y = torch.rand(BATCH, generator=g) * 5
        batches[task] = (ids, y)
    return batches


def task_loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind(task) == "sst":
        return F.cross_entropy(logits, y)
    if kind(task) == "qqp":
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)
    return F.mse_loss(logits.squeeze(-1), y)


def features_separate(encoder, batches):
    return {t: encoder(input_ids=batches[t][0]).last_hidden_state[:, 0] for t in TASKS}


def features_concatenated(encoder, batches):
    ids = torch.cat([batches[t][0] for t in TASKS])
    cls = encoder(input_ids=ids).last_hidden_state[:, 0]
    return dict(zip(TASKS, cls.split(BATCH), strict=True)), cls


def losses_from(features, heads, batches):
    return {t: task_loss(t, heads[t](features[t]), batches[t][1]) for t in TASKS}


def build(method: str, layout: str) -> Callable[[dict], None]:
    """One training step of ``method`` in ``layout`` on a fresh model (same init everywhere)."""
    encoder, heads = make_model()
    params = [*encoder.parameters(), *heads.parameters()]
    adam = torch.optim.Adam(params, lr=1e-4)

    if method == "plain":
        def step(batches):
            adam.zero_grad()
            if layout == "S":
                feats = features_separate(encoder, batches)
            else:
                feats, _ = features_concatenated(encoder, batches)
            sum(losses_from(feats, heads, batches).values()).backward()
            adam.step()
        return step

    if method in ("mtlkit", "mtlkit-auto", "mtlkit-per-task", "mtlkit-stacked"):
        from mtlkit import PCGrad

        shared = None if method == "mtlkit-auto" else list(encoder.parameters())
        opt = PCGrad(adam, shared_params=shared, seed=0)

        def step(batches):
            opt.zero_grad()
            if method == "mtlkit-per-task":
                for t in TASKS:
                    feat = encoder(input_ids=batches[t][0]).last_hidden_state[:, 0]
                    opt.task_backward(t, task_loss(t, heads[t](feat), batches[t][1]))
                opt.combine()
            elif method == "mtlkit-stacked":  # one backward, split by the tasks' rows
                with opt.stacked(encoder, {t: BATCH for t in TASKS}):
                    feats, _ = features_concatenated(encoder, batches)
                    opt.backward(losses_from(feats, heads, batches))
            else:
                if layout == "S":
                    feats = features_separate(encoder, batches)
                else:
                    feats, _ = features_concatenated(encoder, batches)
                opt.backward(losses_from(feats, heads, batches))
            opt.step()
        return step

    if method == "torchjd":
        from torchjd.aggregation import PCGrad as JDPCGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = JDPCGrad()
        shared = list(encoder.parameters())

        def step(batches):
            adam.zero_grad()
            if layout == "S":
                feats = features_separate(encoder, batches)
                features = [feats[t] for t in TASKS]
            else:
                feats, cls = features_concatenated(encoder, batches)
                features = [cls]
            losses = losses_from(feats, heads, batches)
            mtl_backward([losses[t] for t in TASKS], features=features, shared_params=shared)
            jac_to_grad(shared, aggregator)
            adam.step()
        return step

    raise ValueError(f"unknown method {method!r}")


def methods_for(layout: str, with_torchjd: bool) -> list[str]:
    names = ["plain", "mtlkit", "mtlkit-auto"]
    if layout == "S":
        names.append("mtlkit-per-task")
    else:
        names.append("mtlkit-stacked")
    if with_torchjd:
        names.append("torchjd")
    return names


def time_layout(layout: str, names: list[str], steps: int, warmup: int) -> dict[str, float]:
    steps_fns = {m: build(m, layout) for m in names}
    times: dict[str, list[float]] = {m: [] for m in names}
    for r in range(warmup + steps):
        batches = make_batches(r)
        for m in names:
            start = time.perf_counter()
            steps_fns[m](batches)
            if r >= warmup:
                times[m].append(time.perf_counter() - start)
    return {m: statistics.median(v) for m, v in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(method: str, layout: str, steps: int) -> None:
    # getrusage's ru_maxrss survives fork+exec (a child starts with its parent's peak), so the
    # peak is read from VmHWM after resetting it to the current RSS once the model is built.
    step = build(method, layout)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    for r in range(steps):
        step(make_batches(r))
    print(json.dumps({"peak_growth_mb": (_status_kib("VmHWM") - before) / 1024}))


def peak_memory(method: str, layout: str, steps: int = 3) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", method, layout, str(steps),
                          "--threads", str(torch.get_num_threads())],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]


def torchjd_available() -> str | None:
    try:
        import torchjd  # noqa: F401
        from torchjd.aggregation import PCGrad  # noqa: F401
    except Exception as exc:  # the reason is printed, not hidden
        return f"torchjd not importable beside torch {torch.__version__}: {exc}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (1 gives steadier ratios on a loaded machine)")
    parser.add_argument("--memory-child", nargs=3, metavar=("METHOD", "LAYOUT", "STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        method, layout, steps = args.memory_child
        peak_memory_child(method, layout, int(steps))
        return

    skip = torchjd_available()
    if skip:
        print(f"skipping torchjd: {skip}")
    encoder, _ = make_model()
    num_shared = sum(p.numel() for p in encoder.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; shared parameters "
          f"P = {num_shared:,}; T*P*4 bytes = {3 * num_shared * 4 / 2**20:.1f} MiB\n")
    print("| layout | method | step ms | x plain | peak MiB | extra vs plain MiB |")
    print("|---|---|---:|---:|---:|---:|")
    ratios = {}
    for layout in ("S", "C"):
        names = methods_for(layout, skip is None)
        med = time_layout(layout, names, args.steps, args.warmup)
        mem = {m: peak_memory(m, layout) for m in names}
        for m in names:
            ratio = med[m] / med["plain"]
            ratios[(layout, m)] = ratio
            print(f"| {layout} | {m} | {med[m] * 1e3:.1f} | {ratio:.2f} | {mem[m]:.0f} | "
                  f"{mem[m] - mem['plain']:+.0f} |")
    print()
    print(f"pcgrad/plain (C): {ratios[('C', 'mtlkit')]:.2f}")
    print(f"pcgrad/plain (C, stacked): {ratios[('C', 'mtlkit-stacked')]:.2f}")
    print(f"pcgrad/plain (S): {ratios[('S', 'mtlkit')]:.2f}")


if __name__ == "__main__":
    main()
