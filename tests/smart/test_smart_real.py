"""SMART on the packaged all-MiniLM-L6-v2 (a BERT), checked to be the pretrained model, and
real SST sentences."""

from __future__ import annotations

import pytest
import torch
import transformers

from mtlkit import SmartLoss, hf_smart_inputs
from real_parts import MODEL_DIR, check_pretrained, load_minilm, read_tsv

pytestmark = pytest.mark.slow


def test_the_pretrained_check_rejects_a_random_bert():
    """The guard the real tests rely on: a randomly initialised MiniLM-shaped BERT fails it."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(MODEL_DIR)
    random_bert = transformers.AutoModel.from_config(config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    with pytest.raises(AssertionError, match="not the pretrained one"):
        check_pretrained(tokenizer, random_bert)


def test_minilm_on_sst_sentences():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    sentences = [row["sentence"] for row in read_tsv("ids-sst-dev.csv", 8)]
    assert len(sentences) == 8 and all(sentences)
    tok, model = load_minilm()
    model.eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
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
