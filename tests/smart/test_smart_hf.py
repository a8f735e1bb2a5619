"""hf_smart_inputs on tiny random BERT / RoBERTa models (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
import transformers

from mtlkit import SmartLoss, hf_smart_inputs

torch.set_num_threads(1)


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64)
    return transformers.BertModel(cfg).eval(), torch.nn.Linear(32, 5)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def test_embeddings_are_word_embeddings_and_forward_matches_input_ids():
    bert, clf = tiny_bert()
    ids, mask, types = batch()
    head = lambda out: clf(out.pooler_output)  # noqa: E731
    emb, fwd = hf_smart_inputs(bert, head, ids, mask, token_type_ids=types)
    # manual: a row lookup in the word-embedding matrix, nothing added
    torch.testing.assert_close(emb, bert.embeddings.word_embeddings.weight[ids])
    direct = head(bert(input_ids=ids, attention_mask=mask, token_type_ids=types))
    torch.testing.assert_close(fwd(emb), direct, atol=1e-6, rtol=1e-5)


def test_encoder_sees_position_and_type_embeddings_exactly_once():
    bert, clf = tiny_bert()
    ids, mask, types = batch()
    seen = []
    hook = bert.embeddings.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    emb, fwd = hf_smart_inputs(bert, lambda out: clf(out.pooler_output), ids, mask,
                               token_type_ids=types)
    fwd(emb)
    hook.remove()
    e = bert.embeddings
    pos = torch.arange(ids.shape[1])
    manual = e.LayerNorm(e.word_embeddings.weight[ids] + e.position_embeddings.weight[pos]
                         + e.token_type_embeddings.weight[types])
    torch.testing.assert_close(seen[0], manual)
    # mt-dnn's mistake: feeding the full embedding output back through inputs_embeds
    wrong = clf(bert(inputs_embeds=e(ids, token_type_ids=types), attention_mask=mask,
                     token_type_ids=types).pooler_output)
    assert not torch.allclose(wrong, fwd(emb), atol=1e-4)


def test_roberta_position_ids_follow_padding():
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=20, pad_token_id=1)
    model = transformers.RobertaModel(cfg).eval()
    ids = torch.randint(3, 60, (2, 6))
    ids[0, 4:] = 1
    mask = (ids != 1).long()
    head = lambda out: out.last_hidden_state[:, 0]  # noqa: E731
    emb, fwd = hf_smart_inputs(model, head, ids, mask)
    direct = head(model(input_ids=ids, attention_mask=mask))
    torch.testing.assert_close(fwd(emb), direct, atol=1e-6, rtol=1e-5)


def test_smart_end_to_end_on_tiny_bert():
    bert, clf = tiny_bert()
    bert.train()
    ids, mask, types = batch()
    emb, fwd = hf_smart_inputs(bert, lambda out: clf(out.pooler_output), ids, mask,
                               token_type_ids=types)
    logits = fwd(emb)
    for project in (True, False):
        reg = SmartLoss(project=project)(fwd, emb, logits, attention_mask=mask)
        assert torch.isfinite(reg) and reg.item() >= 0
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])) + reg
    loss.backward()
    assert bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_validation():
    bert, clf = tiny_bert()
    ids, _mask, _ = batch()
    head = lambda out: clf(out.pooler_output)  # noqa: E731
    with pytest.raises(TypeError, match="encoder"):
        hf_smart_inputs(lambda x: x, head, ids)
    with pytest.raises(TypeError, match="head"):
        hf_smart_inputs(bert, None, ids)
    with pytest.raises(TypeError, match="input_ids"):
        hf_smart_inputs(bert, head, ids.float())
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf_smart_inputs(bert, head, ids, inputs_embeds=torch.zeros(3, 8, 32))
    with pytest.raises(TypeError, match="get_input_embeddings"):
        hf_smart_inputs(torch.nn.Linear(2, 2), head, ids)


def test_roberta_position_ids_found_inside_a_wrapper():
    # RobertaForSequenceClassification keeps its embeddings at .roberta.embeddings: the helper
    # must still pass padding-aware position ids, or the padded row's outputs differ
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=20, pad_token_id=1, num_labels=3)
    model = transformers.RobertaForSequenceClassification(cfg).eval()
    ids = torch.randint(3, 60, (2, 6))
    ids[0, :2] = 1  # left padding: positions differ from 0..5 shifted by the padding index
    mask = (ids != 1).long()
    emb, fwd = hf_smart_inputs(model, lambda out: out.logits, ids, mask)
    direct = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(fwd(emb), direct, atol=1e-6, rtol=1e-5)
