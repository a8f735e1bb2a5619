"""One training step of the reference pipeline's model with each AdamW implementation.

Setup: a BERT of all-MiniLM-L6-v2's shape (hidden 384, 6 layers, 12 heads, intermediate 1536,
the 30,522-token vocabulary: 22.6M parameters, randomly initialised, so nothing is downloaded)
with a 5-class head on mean pooling, batch 16 of 32 tokens, bf16 autocast, and what the
pipeline does after the backward pass: gradient-norm clipping at 1.0, an AdamW step (betas
(0.9, 0.99), no weight decay) and the weight EMA. CPU, 2 threads. The variants differ only in
the AdamW implementation:

- ``for-loop``: ``torch.optim.AdamW(...)``, what PyTorch picks for CPU tensors by default;
- ``foreach``: ``foreach=True``, the multi-tensor implementation (PyTorch's default on CUDA);
- ``fused``: ``fused=True``, one kernel over all parameters; what the pipeline uses
  (``examples/multitask_bert/optim.py``).

Variants run in interleaved rounds (one step each per round, shuffled) so that load from other
processes hits them alike; the table gives medians over rounds of the whole step and of its
optimizer part (clip + AdamW + EMA). A last check makes one step of each from the same weights
and reports the largest weight difference from the for-loop's: the update is the same.

Run: ``PYTHONPATH=src python benchmarks/bench_train_step.py [--rounds 15]``. Last line:
``fused/for-loop step: X.XX`` (the step time of the pipeline's AdamW over PyTorch's CPU default).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import BertConfig, BertModel

VARIANTS = {"for-loop": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def build(kind: str, seed: int = 0):
    """Model, head, optimizer and EMA copy for one AdamW variant, from the same weights."""
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, vocab_size=30522)
    bert, head = BertModel(cfg, add_pooling_layer=False), torch.nn.Linear(384, 5)
    params = [*bert.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                            **VARIANTS[kind])
    ema = [p.detach().clone() for p in params]
    return bert, head, params, opt, ema


def make_batch(batch: int = 16, length: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    return ids, mask, torch.randint(0, 5, (batch,), generator=g)


def make_step(kind: str):
    bert, head, params, opt, ema = build(kind)
    ids, mask, y = make_batch()

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = bert(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), y)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach() for p in params], 0.001)
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1

    return step, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {k: make_step(k)[0] for k in VARIANTS}
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        for k in order:
            times[k].append(steps[k]())
    base = statistics.median(t for t, _ in times["for-loop"])
    print(f"MiniLM-shaped BERT (22.6M parameters), batch 16 x 32 tokens, bf16 autocast, "
          f"{args.threads} threads, {args.rounds} rounds\n")
    print("| AdamW | step ms | clip + AdamW + EMA ms | step / for-loop step |")
    print("|---|---:|---:|---:|")
    for k in VARIANTS:
        step = statistics.median(t for t, _ in times[k])
        opt_part = statistics.median(o for _, o in times[k])
        print(f"| {k} | {step * 1e3:.0f} | {opt_part * 1e3:.0f} | {step / base:.2f} |")

    # same update: one step from the same weights, so the same gradients (after that, bf16
    # autocast turns rounding-level weight differences into different gradients)
    finals = {}
    for k in VARIANTS:
        fn, params = make_step(k)
        before = torch.cat([p.detach().flatten() for p in params])
        fn()
        finals[k] = torch.cat([p.detach().flatten() for p in params])
    moved = (finals["for-loop"] - before).abs().max().item()
    print(f"\nlargest weight change of the for-loop's first step: {moved:.2e}")
    for k in ("foreach", "fused"):
        diff = (finals[k] - finals["for-loop"]).abs().max().item()
        print(f"largest weight difference from the for-loop's after it, {k}: {diff:.2e}")
    fused = statistics.median(t for t, _ in times["fused"])
    print(f"\nfused/for-loop step: {fused / base:.2f}")


if __name__ == "__main__":
    main()
