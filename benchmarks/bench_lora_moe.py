"""Benchmark LoRAMoE against peft with one LoRA adapter and against the bare model.

Everything runs in one process on the same random BERT, timed round-robin (each repeat times
every variant once) so that background load hits all variants alike. Ratios use the best
(minimum) time of each variant, as ``timeit`` advises: noise only ever adds time. Medians are
printed beside them.

* training step (forward + backward), train mode, batch of one task: bare model (full
  fine-tuning, plain PyTorch), peft with a single adapter, LoRAMoE with three experts;
* the same with a mixed-task batch (LoRAMoE only: peft refuses ``adapter_names`` in training);
* inference (no grad, eval mode), mixed-task batch: LoRAMoE against peft's ``adapter_names``;
* inference of a merged expert (``LoRAMoE.merged``) against the bare model (target 1.00x).

The last line is ``moe/peft_single: X.XX``, the single-task training-step ratio (target <= 1.10).

Usage: ``PYTHONPATH=src python benchmarks/bench_lora_moe.py [--hidden 256 --layers 4 ...]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel

from mtlkit import LoRAMoE, LoRAMoEConfig
from mtlkit.lora_moe.config import BERT_TARGET_MODULES

TASKS = ["sst", "qqp", "sts"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--r", type=int, default=32)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def time_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(best, median) seconds of each function, timed in turn ``repeats`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: (min(s), statistics.median(s)) for name, s in samples.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    bare = BertModel(cfg)
    ids = torch.randint(1, 1000, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask}
    mixed = [TASKS[i % len(TASKS)] for i in range(args.batch)]
    proj = torch.randn(args.batch, args.seq, args.hidden)

    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=BERT_TARGET_MODULES)
    peft_single = get_peft_model(copy.deepcopy(bare), lora, adapter_name="sst")
    peft_multi = get_peft_model(copy.deepcopy(bare), lora, adapter_name=TASKS[0])
    for t in TASKS[1:]:
        peft_multi.add_adapter(t, lora)
    moe = LoRAMoE(copy.deepcopy(bare), LoRAMoEConfig(tasks=TASKS, r=args.r, alpha=args.alpha))
    for m in (moe, peft_multi):  # non-zero B so that every path really computes
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.01)

    def step(run: Callable[[], object], model: torch.nn.Module) -> Callable[[], None]:
        def fn() -> None:
            model.zero_grad(set_to_none=True)
            out = run()
            (out.last_hidden_state * proj).sum().backward()

        return fn

    for m in (bare, peft_single, moe):
        m.train()
    train = time_round_robin(
        {
            "bare model (full fine-tuning)": step(lambda: bare(**inputs), bare),
            "peft, one adapter": step(lambda: peft_single(**inputs), peft_single),
            "LoRAMoE, single-task batch": step(lambda: moe(task="sst", **inputs), moe),
            "LoRAMoE, mixed-task batch": step(lambda: moe(task=mixed, **inputs), moe),
        },
        args.repeats,
        args.warmup,
    )

    moe.eval()
    peft_single.eval()
    peft_multi.eval()
    bare.eval()
    merged = moe.merged("sst").eval()
    with torch.inference_mode():
        infer = time_round_robin(
            {
                "bare model": lambda: bare(**inputs),
                "merged expert (LoRAMoE.merged)": lambda: merged(**inputs),
                "peft, one adapter": lambda: peft_single(**inputs),
                "LoRAMoE, single-task batch": lambda: moe(task="sst", **inputs),
                "peft adapter_names, mixed batch": lambda: peft_multi(
                    **inputs, adapter_names=mixed
                ),
                "LoRAMoE, mixed batch": lambda: moe(task=mixed, **inputs),
            },
            args.repeats,
            args.warmup,
        )

    print(
        f"BERT hidden={args.hidden} layers={args.layers} batch={args.batch} seq={args.seq} "
        f"r={args.r}, {len(TASKS)} experts, torch threads={args.threads}, "
        f"best and median of {args.repeats}\n"
    )
    table("training step (fwd + bwd)", train, "peft, one adapter")
    table("inference (no grad)", infer, "bare model")

    def ratio(times: dict[str, tuple[float, float]], a: str, b: str) -> str:
        return f"{times[a][0] / times[b][0]:.2f}"

    mixed_vs_peft = ratio(infer, "LoRAMoE, mixed batch", "peft adapter_names, mixed batch")
    print(f"moe_mixed/peft_adapter_names (inference): {mixed_vs_peft}")
    merged_vs_bare = ratio(infer, "merged expert (LoRAMoE.merged)", "bare model")
    print(f"merged/bare (inference): {merged_vs_bare}")
    print(f"moe/peft_single: {ratio(train, 'LoRAMoE, single-task batch', 'peft, one adapter')}")


def table(title: str, times: dict[str, tuple[float, float]], ref: str) -> None:
    print(f"| {title} | best ms | median ms | best vs {ref} |")
    print("|---|---:|---:|---:|")
    for name, (best, median) in times.items():
        print(f"| {name} | {best * 1e3:.1f} | {median * 1e3:.1f} | {best / times[ref][0]:.2f}x |")
    print()

if __name__ == "__main__":
    main()
