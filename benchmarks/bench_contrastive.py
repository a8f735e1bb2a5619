"""SimCSELoss against sentence-transformers' MultipleNegativesRankingLoss math, and plain PyTorch.

For each batch size x embedding dim, time ``loss + backward`` on fixed random embeddings for:

- ``mtlkit``: :class:`mtlkit.SimCSELoss` (temperature 0.05),
- ``st_mnrl``: ``MultipleNegativesRankingLoss(scale=20).compute_loss_from_embeddings`` from
  sentence-transformers (the same math: cosine / temperature, in-batch negatives, cross-entropy),
- ``plain``: a hand-written ``normalize -> matmul -> cross_entropy`` in plain PyTorch.

Losses and gradients are asserted equal (tolerance) before timing. Implementations are timed in
interleaved rounds whose order rotates (best of each), so background load and whichever-runs-
first effects hit all of them alike. The last line is
the geometric mean over the configurations of the time ratio mtlkit / st_mnrl.

Run: ``PYTHONPATH=src python benchmarks/bench_contrastive.py [--device cuda] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from mtlkit import SimCSELoss

TEMPERATURE = 0.05


def plain_loss(z1: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor | None) -> torch.Tensor:
    candidates = z2 if z3 is None else torch.cat([z2, z3])
    logits = F.normalize(z1, dim=-1) @ F.normalize(candidates, dim=-1).T / TEMPERATURE
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


def make_impls() -> dict[str, Callable[..., torch.Tensor]]:
    simcse = SimCSELoss(temperature=TEMPERATURE)
    mnrl = MultipleNegativesRankingLoss(None, scale=1 / TEMPERATURE)  # type: ignore[arg-type]

    def st_mnrl(z1, z2, z3):
        return mnrl.compute_loss_from_embeddings([z1, z2] if z3 is None else [z1, z2, z3], None)

    return {"mtlkit": simcse, "st_mnrl": st_mnrl, "plain": plain_loss}


def run_once(fn, inputs: list[torch.Tensor], with_z3: bool) -> tuple[torch.Tensor, list]:
    for z in inputs:
        z.grad = None
    loss = fn(inputs[0], inputs[1], inputs[2] if with_z3 else None)
    loss.backward()
    return loss.detach(), [None if z.grad is None else z.grad.clone() for z in inputs]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(batch, dim, with_z3, device, repeats, impls) -> dict[str, float]:
    g = torch.Generator().manual_seed(batch * 7919 + dim)
    inputs = [torch.randn(batch, dim, generator=g).to(device).requires_grad_() for _ in range(3)]
    reference = None
    for name, fn in impls.items():  # same numbers first (also the warm-up)
        loss, grads = run_once(fn, inputs, with_z3)
        if reference is None:
            reference = (loss, grads)
            continue
        torch.testing.assert_close(loss, reference[0], rtol=1e-4, atol=1e-5, msg=name)
        for got, want in zip(grads, reference[1], strict=True):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6, msg=name)
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for round_ in range(repeats):
        # rotate the order every round: whichever runs first in a round is measurably faster
        # (allocator and cache state), so no implementation may always go first
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn = impls[name]
            sync(device)
            start = time.perf_counter()
            run_once(fn, inputs, with_z3)
            sync(device)
            times[name].append(time.perf_counter() - start)
    # best of the rounds, as timeit advises: on a shared CPU the timings are bimodal (the fast
    # mode is the code, the slow one is other processes), and a median lands on either mode
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = make_impls()

    configs = [(b, d, False) for b in args.batches for d in args.dims]
    configs.append((256, 768, True))  # supervised: one hard negative per anchor
    print(f"device: {device}, torch {torch.__version__}, threads {args.threads}, "
          f"best of {args.repeats} interleaved rounds, loss + backward")
    print()
    print("| batch | dim | z3 | mtlkit (ms) | st_mnrl (ms) | plain (ms) | mtlkit/st_mnrl |"
          " mtlkit/plain |")
    print("|---:|---:|:---:|---:|---:|---:|---:|---:|")
    ratios = []
    for batch, dim, with_z3 in configs:
        t = bench_config(batch, dim, with_z3, device, args.repeats, impls)
        ratio = t["mtlkit"] / t["st_mnrl"]
        ratios.append(ratio)
        print(f"| {batch} | {dim} | {'yes' if with_z3 else 'no'} | {t['mtlkit'] * 1e3:.3f} | "
              f"{t['st_mnrl'] * 1e3:.3f} | {t['plain'] * 1e3:.3f} | {ratio:.2f} | "
              f"{t['mtlkit'] / t['plain']:.2f} |")
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print()
    print("losses and gradients equal (asserted) for every configuration; "
          "ratio = geometric mean of mtlkit/st_mnrl over configurations")
    print(f"simcse/st_mnrl: {geomean:.2f}")


if __name__ == "__main__":
    main()
