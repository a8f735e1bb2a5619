"""A mixture of LoRA experts trained together; one expert merged out and served as a plain model.

``mtlkit.LoRAMoE`` gives each task (SST-5, Quora, STS-B) its own LoRA expert on one frozen
MiniLM (the paper's "Mixture of Low-Rank Experts", Eq. 6). The three experts and the task heads
are trained together in one interleaved loop (data, heads and evaluation come from
``multitask_interleaved.py``). Then ``moe.merged(task)`` folds one expert into the weights of a
plain ``BertModel``; it is saved with ``save_pretrained``, loaded back with
``AutoModel.from_pretrained`` as any Hugging Face model, and its predictions are compared with
the mixture's: they are equal to float rounding.

Run (about 2 minutes on 2 CPU cores)::

    python examples/lora_experts.py --data-dir /path/to/data [--serve sts --out served-sts]
    python examples/lora_experts.py --steps 3 --dev-rows 32          # a smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoModel, AutoTokenizer

from mtlkit import LoRAMoE, LoRAMoEConfig, MultiTaskLoader
from mtlkit.integrations import resolve_pretrained  # the MiniLM name -> its packaged copy
from multitask_interleaved import LOSSES, TASKS, Collate, MultiTaskModel, evaluate, load_rows

logger = logging.getLogger("lora_experts")


class MixtureModel(MultiTaskModel):
    """The heads of ``MultiTaskModel`` on a ``LoRAMoE``: each task's batch goes to its expert."""

    def encode(self, task: str, inputs: dict):
        return self.encoder(task=task, **inputs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=40, help="training steps (one batch per task)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per task and step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r (the paper: 256 on BERT-base)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--serve", choices=TASKS, default="sts", help="the expert to merge and serve")
    p.add_argument("--out", help="where to save the served model (default: a temporary folder)")
    p.add_argument("--dev-rows", type=int, default=200, help="dev rows per task (a random subset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def serve(model: MixtureModel, task: str, out: Path, tokenizer) -> MultiTaskModel:
    """Merge ``task``'s expert, save it as a plain model, and load it back as a user would."""
    model.encoder.merged(task).save_pretrained(out / "encoder")  # a BertModel, no adapter code
    tokenizer.save_pretrained(out / "encoder")
    save_file(model.heads[task].state_dict(), out / f"{task}_head.safetensors")
    served = MultiTaskModel(AutoModel.from_pretrained(out / "encoder"))
    served.heads[task].load_state_dict(load_file(out / f"{task}_head.safetensors"))
    return served.eval()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    path = resolve_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # One expert per task on the frozen encoder; alpha / r scales the experts' updates.
    config = LoRAMoEConfig(tasks=list(TASKS), r=args.rank, alpha=2 * args.rank)
    moe = LoRAMoE(AutoModel.from_pretrained(path), config)
    model = MixtureModel(moe, hidden_size=moe.model.config.hidden_size)
    counts = moe.num_parameters()
    logger.info("frozen base %.1fM parameters, %.2fM per expert", counts.base / 1e6,
                counts.per_expert[TASKS[0]] / 1e6)
    train = {t: DataLoader(load_rows(args.data_dir, t, "train"), batch_size=args.batch_size,
                           shuffle=True, collate_fn=Collate(tokenizer, t)) for t in TASKS}
    dev = {t: DataLoader(load_rows(args.data_dir, t, "dev", args.dev_rows), batch_size=64,
                         collate_fn=Collate(tokenizer, t)) for t in TASKS}
    # Every expert and head in one optimizer (trainable_parameters never misses an expert).
    params = [*moe.trainable_parameters(), *model.heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, fused=True)
    loader = MultiTaskLoader(train, mode="interleaved", seed=args.seed, steps_per_epoch=args.steps)
    model.train()
    for i, step in enumerate(tqdm(loader, desc="train"), 1):
        losses = {t: LOSSES[t](model(t, x), y) for t, (x, y) in step.items()}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        optimizer.step()
        if i == 1 or i % 10 == 0 or i == args.steps:
            logger.info("step %d/%d loss %s", i, args.steps,
                        " ".join(f"{t}={v.item():.4f}" for t, v in losses.items()))
    scores = evaluate(model, dev)
    logger.info("dev, the mixture (%d rows per task): %s", args.dev_rows,
                " ".join(f"{k}={v:.3f}" for k, v in scores.items()))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        served = serve(model, args.serve, out, tokenizer)
        model.eval()
        with torch.no_grad():
            diffs = [(served(args.serve, x) - model(args.serve, x)).abs().max().item()
                     for x, _ in dev[args.serve]]
    logger.info("served %s model: a plain %s, saved under %s", args.serve,
                type(served.encoder).__name__, args.out or "a temporary folder")
    logger.info("merged == served: %s (largest |served - mixture| on %d dev rows: %.2e)",
                max(diffs) < 1e-4, len(dev[args.serve].dataset), max(diffs))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with logging_redirect_tqdm():
        main()
