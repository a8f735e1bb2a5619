"""SimCSE pre-training on positive pairs mined from Quora and STS-B (the paper's section 4).

``mtlkit.mine_pairs`` keeps the labelled paraphrases of the training files (Quora duplicates,
STS-B pairs scored 4 or more) as ``(anchor, positive)`` rows, each with a hard negative (a
sentence from a pair labelled as *not* similar); ``mtlkit.group_ids`` marks rows that share a
sentence, so that a paraphrase of the anchor is never counted as a negative. The encoder's
``[CLS]`` embeddings (as in the paper) of the three columns go to ``mtlkit.SimCSELoss``.

The script logs the loss as it falls and the STS-B dev correlation (Pearson) of the cosine
similarity of the two sentences' embeddings, before and after. A model pre-trained this way is
the starting point of multi-task fine-tuning (``multitask_interleaved.py``).

Run (about 2 minutes on 2 CPU cores)::

    python examples/simcse_pretrain.py --data-dir /path/to/data
    python examples/simcse_pretrain.py --steps 3 --dev-rows 64      # a smoke test
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoModel, AutoTokenizer

from mtlkit import SimCSELoss, group_ids, mine_pairs
from mtlkit.integrations import resolve_pretrained  # the MiniLM name -> its packaged copy
from multitask_interleaved import load_rows

logger = logging.getLogger("simcse_pretrain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MTLKIT_DATA_DIR"),
                   help="the CS224N CSV files (default: $MTLKIT_DATA_DIR)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16, help="rows (anchor, positive, negative)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--dev-rows", type=int, default=400, help="STS-B dev rows (a random subset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the directory of the CS224N CSV files, got nothing "
                "(or set MTLKIT_DATA_DIR)")
    return args


def embed(encoder, tokenizer, sentences: list[str]) -> torch.Tensor:
    """The ``[CLS]`` embedding of each sentence."""
    inputs = tokenizer(sentences, padding=True, truncation=True, max_length=64,
                       return_tensors="pt")
    return encoder(**inputs).last_hidden_state[:, 0]


@torch.no_grad()
def sts_correlation(encoder, tokenizer, rows: list[tuple]) -> float:
    """Pearson correlation of cos(embedding 1, embedding 2) with the STS-B scores."""
    encoder.eval()
    cosines = []
    for i in tqdm(range(0, len(rows), 128), desc="sts dev"):
        s1, s2, _ = zip(*rows[i:i + 128], strict=True)
        cosines.append(F.cosine_similarity(embed(encoder, tokenizer, list(s1)),
                                           embed(encoder, tokenizer, list(s2))))
    encoder.train()
    scores = torch.tensor([label for _, _, label in rows])
    return torch.corrcoef(torch.stack([torch.cat(cosines), scores]))[0, 1].item()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    path = resolve_pretrained(args.model)
    encoder, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    # Rows are (sentence1, sentence2, label): the keys are positions.
    keys = {"sentence_keys": (0, 1), "label_key": 2, "hard_negatives": "pool", "seed": args.seed}
    pairs = mine_pairs(load_rows(args.data_dir, "sts", "train"), threshold=4.0,
                       negative_threshold=1.0, **keys)
    pairs += mine_pairs(load_rows(args.data_dir, "qqp", "train"), threshold=1.0,
                        negative_threshold=0.0, **keys)
    rows = list(zip(pairs, group_ids(pairs), strict=True))
    logger.info("mined %d positive pairs with hard negatives", len(rows))
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        collate_fn=lambda batch: tuple(zip(*batch, strict=True)))
    dev = load_rows(args.data_dir, "sts", "dev", args.dev_rows)
    before = sts_correlation(encoder, tokenizer, dev)
    logger.info("STS-B dev correlation before: %.4f", before)

    loss_fn = SimCSELoss(temperature=args.temperature)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, fused=True)
    encoder.train()  # dropout on, as in SimCSE
    losses = []
    progress = tqdm(itertools.islice(loader, args.steps), desc="simcse", total=args.steps)
    for i, (batch_pairs, ids) in enumerate(progress, 1):
        anchors, positives, negatives = (list(column) for column in zip(*batch_pairs, strict=True))
        # One forward pass over the three columns, split back into z1, z2, z3.
        z1, z2, z3 = embed(encoder, tokenizer, anchors + positives + negatives).chunk(3)
        loss = loss_fn(z1, z2, z3, ids=torch.tensor(ids))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if i == 1 or i % 10 == 0 or i == args.steps:
            logger.info("step %d/%d loss %.4f", i, args.steps, loss.item())
    k = max(1, len(losses) // 4)
    logger.info("loss: mean of the first %d steps %.4f, of the last %d steps %.4f",
                k, sum(losses[:k]) / k, k, sum(losses[-k:]) / k)
    after = sts_correlation(encoder, tokenizer, dev)
    logger.info("STS-B dev correlation after: %.4f (before: %.4f)", after, before)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with logging_redirect_tqdm():
        main()
