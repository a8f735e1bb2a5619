"""The usual Hugging Face inputs: tokenized ``datasets.Dataset`` per task and the Trainer's
padding collator; columns the model does not take are dropped as the Trainer drops them."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from hf_tiny_models import TinyMultiTask, quiet, training_args
from transformers import BertTokenizerFast, DataCollatorWithPadding

from mtlkit.integrations.transformers import MultiTaskTrainer

WORDS = ["good", "bad", "film", "plot", "great", "dull", "is", "a", "the", "very"]


def tokenizer(tmp_path) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))


def task_dataset(tok, n: int, label, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) for _ in range(n)]
    ds = datasets.Dataset.from_dict({"sentence": sentences, "label": [label(i) for i in range(n)]})
    return ds.map(lambda row: tok(row["sentence"]), batched=True)


def test_tokenized_datasets_with_the_padding_collator(tmp_path):
    tok = tokenizer(tmp_path)
    train = {"sst": task_dataset(tok, 12, lambda i: i % 5, 0),
             "sts": task_dataset(tok, 8, lambda i: i / 2, 1)}
    assert "token_type_ids" in train["sst"].column_names  # the model takes none: dropped
    torch.manual_seed(0)
    args = training_args(tmp_path / "out", max_steps=3)
    trainer = quiet(MultiTaskTrainer(
        TinyMultiTask(tasks=("sst", "sts")), args, train_dataset=train, eval_dataset=train,
        processing_class=tok, data_collator=DataCollatorWithPadding(tok)))
    trainer.train()
    assert trainer.state.global_step == 3
    assert {"loss_sst", "loss_sts"} <= set(trainer.state.log_history[0])
    metrics = trainer.evaluate()
    assert {"eval_sst_loss", "eval_sts_loss", "eval_loss"} <= set(metrics)
    assert np.isfinite(metrics["eval_loss"])
