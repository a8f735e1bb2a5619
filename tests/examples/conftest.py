"""Fixtures for the reference pipeline's tests: the examples directory on sys.path, a tiny
random BERT with a tiny tokenizer saved as a local model directory, and small CS224N-format
CSV files written with every quirk of ../shared/data/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"
for _p in (EXAMPLES, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pipeline_helpers import PUNCT, WORDS, write_cs224n  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model directory: random 2-layer BERT (hidden 32) + a word-level tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PUNCT]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    assert tok("good film")["input_ids"][1] == vocab.index("good"), "tokenizer did not load vocab"
    tok.save_pretrained(d)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)  # the same tiny model whichever tests ran before
    BertModel(cfg).save_pretrained(d)
    return d


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_cs224n(tmp_path / "data")
