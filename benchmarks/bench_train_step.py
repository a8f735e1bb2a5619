"""One training step of the reference pipeline: precision, AdamW, and the best recipe's step.

Three tables, each from interleaved rounds (one step of every variant per round, in a shuffled
order, so that load from other processes hits them alike; medians over the rounds):

1. **Precision**: a plain step (forward, backward, for-loop AdamW) of a MiniLM-shaped BERT
   (hidden 384, 6 layers, 12 heads, the 30,522-token vocabulary: 22.6M parameters, random
   weights) with a 5-class head, batch 16 of 32 tokens, in float32 and under bfloat16
   autocast. bf16 pays only where the CPU has native bf16 (AVX-512-BF16, AMX); the CPU
   capability is printed first, and ``--precision auto`` picks bf16 exactly there.
2. **AdamW**: the same step in float32 with gradient clipping, the weight average and each
   AdamW implementation (for-loop, PyTorch's CPU default; foreach; fused, the pipeline's).
3. **The best recipe's step**: what ``--preset best`` does per step of its Quora + STS-B
   member, through the pipeline's own code (``multitask_bert.train.Trainer.step`` on batches
   drawn by its ``mtlkit.MultiTaskLoader``: one full encoder per task, fused AdamW, clipping
   at 1.0, the weight average (``AveragedModel``), the linear schedule, pair swapping), at the
   precision ``--precision auto`` picks here, against a plain float32 step of the same model
   (the same batches, summed losses, backward, ``torch.optim.AdamW`` with its defaults). The
   target on a CPU without native bf16 is at most 1.2x.

Run: ``PYTHONPATH=src python benchmarks/bench_train_step.py [--rounds 15] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from multitask_bert.data import TaskSplit, TokenizedTask  # noqa: E402
from multitask_bert.model import MultiTaskBert, task_loss  # noqa: E402
from multitask_bert.precision import cpu_capability, resolve_precision  # noqa: E402
from multitask_bert.presets import RECIPES  # noqa: E402
from multitask_bert.train import Trainer  # noqa: E402

MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522}
Step = Callable[[], float]


def _bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(**MINILM), add_pooling_layer=False)


def _batch(batch: int = 16, length: int = 32, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (batch, length), generator=g)
    return ids, torch.ones_like(ids), torch.randint(0, 5, (batch,), generator=g)


def plain_step(bf16: bool = False, adamw: dict | None = None, extras: bool = False) -> Step:
    """One step of BERT + a head; ``extras``: clipping and the weight average too."""
    bert, head = _bert(), torch.nn.Linear(384, 5)
    params = [*bert.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                            **(adamw or {}))
    average = [p.detach().clone() for p in params]
    ids, mask, y = _batch()

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pooled = bert(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), y)
        loss.backward()
        if extras:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if extras:
            torch._foreach_lerp_(average, [p.detach() for p in params], 0.001)
        return time.perf_counter() - t0

    return step


def _pair_sets(rows: int = 512, seed: int = 0) -> dict[str, TokenizedTask]:
    """Synthetic Quora and STS-B training sets of realistic lengths (11 to 24 tokens a side)."""
    rng = random.Random(seed)

    class Tokenizer:  # ids are random words; the model sees token ids only
        pad_token_id = 0

        def __call__(self, a: list[str], b: list[str] | None = None, **_: object) -> dict:
            out = {"input_ids": [], "token_type_ids": []}
            for i, text in enumerate(a):
                n1, n2 = len(text.split()), len(b[i].split()) if b else 0
                out["input_ids"].append([101] + [rng.randrange(1000, 30522)
                                                 for _ in range(n1 + n2)] + [102, 102])
                out["token_type_ids"].append([0] * (n1 + 2) + [1] * (n2 + 1))
            return out

    def words() -> str:
        return " ".join("w" for _ in range(rng.randint(9, 22)))

    sets = {}
    for task in ("qqp", "sts"):
        labels = [float(rng.randint(0, 1)) if task == "qqp" else rng.uniform(0, 5)
                  for _ in range(rows)]
        split = TaskSplit(task, "train", Path("synthetic"), [str(i) for i in range(rows)],
                          [words() for _ in range(rows)], [words() for _ in range(rows)],
                          labels)
        sets[task] = TokenizedTask(split, Tokenizer(), "cross", 128, pad_multiple=8,
                                   both_orders=True)
    return sets


def recipe_steps(out: Path) -> tuple[Step, Step, str]:
    """The best recipe's pair-member step through the pipeline, and a plain fp32 step of the
    same model on the same batches; and the precision the recipe uses here."""
    best = RECIPES["best"]
    cfg = best.member(best.ensemble[0], 0, out)
    precision = resolve_precision(cfg.precision, torch.device("cpu"), log=False)
    sets = _pair_sets()

    def model() -> MultiTaskBert:
        return MultiTaskBert(None, 384, task_encoders={t: _bert(k) for k, t in
                                                       enumerate(cfg.tasks)},
                             dropout=cfg.dropout, pooling=cfg.pooling).train()

    trainer = Trainer(cfg, model(), sets, lambda m: {}, torch.device("cpu"), out, precision)
    draws = iter(trainer.loader)
    batches = [next(draws) for _ in range(8)]

    def recipe() -> float:
        nonlocal draws
        t0 = time.perf_counter()
        item = next(draws, None)
        if item is None:
            draws = iter(trainer.loader)
            item = next(draws)
        trainer.step(item)
        return time.perf_counter() - t0

    plain_model = model()
    opt = torch.optim.AdamW(plain_model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    turn = [0]

    def plain() -> float:
        t0 = time.perf_counter()
        item = batches[turn[0] % len(batches)]
        turn[0] += 1
        opt.zero_grad(set_to_none=True)
        losses = []
        for task, batch in item.items():
            batch = {k: v for k, v in batch.items() if k not in ("index", "labels")}
            losses.append(task_loss(task, plain_model(task, batch), item[task]["labels"]))
        torch.stack(losses).sum().backward()
        opt.step()
        return time.perf_counter() - t0

    return recipe, plain, precision.name


def measure(steps: dict[str, Step], rounds: int) -> dict[str, float]:
    """Median seconds per step of each variant over interleaved, shuffled rounds."""
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(steps)
        rng.shuffle(order)
        for k in order:
            times[k].append(steps[k]())
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU capability: {cpu_capability()}; torch {torch.__version__}, {args.threads} "
          f"threads, {args.rounds} rounds; --precision auto: "
          f"{resolve_precision('auto', torch.device('cpu'), log=False).reason}\n")

    t = measure({"fp32": plain_step(), "bf16": plain_step(bf16=True)}, args.rounds)
    print("| precision (MiniLM-shaped BERT, batch 16 x 32) | step ms | step / fp32 step |")
    print("|---|---:|---:|")
    for k, v in t.items():
        print(f"| {k} | {v * 1e3:.0f} | {v / t['fp32']:.2f} |")

    variants = {"for-loop": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    t = measure({k: plain_step(adamw=kw, extras=True) for k, kw in variants.items()},
                args.rounds)
    print("\n| AdamW (fp32, with clipping and the weight average) | step ms | "
          "step / for-loop step |")
    print("|---|---:|---:|")
    for k, v in t.items():
        print(f"| {k} | {v * 1e3:.0f} | {v / t['for-loop']:.2f} |")

    with tempfile.TemporaryDirectory() as tmp:
        recipe, plain, name = recipe_steps(Path(tmp))
        t = measure({"plain": plain, "recipe": recipe}, args.rounds)
    print("\n| step of the best recipe's Quora + STS-B member (2 encoders) | step ms | "
          "step / plain fp32 step |")
    print("|---|---:|---:|")
    print(f"| plain fp32 (sum of losses, backward, default AdamW) | {t['plain'] * 1e3:.0f} | "
          "1.00 |")
    print(f"| --preset best ({name}: loader, fused AdamW, clipping, weight average, schedule) "
          f"| {t['recipe'] * 1e3:.0f} | {t['recipe'] / t['plain']:.2f} |")
    print(f"\nbest recipe step / plain fp32 step: {t['recipe'] / t['plain']:.2f}")


if __name__ == "__main__":
    main()
