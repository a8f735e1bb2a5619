"""SMART on a LoRAMoE: get_input_embeddings() lets hf_smart_inputs take the mixture."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from mtlkit import LoRAMoE, SmartLoss, hf_smart_inputs

TASKS = ["sst", "qqp"]
H = 32


def tiny_moe(seed: int = 0) -> LoRAMoE:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    moe = LoRAMoE(transformers.BertModel(cfg), tasks=TASKS, r=4, alpha=8.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # peft starts B at zero: give every expert real weights
        for name, p in moe.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return moe


def inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return ids, mask


def expert_grads(moe: LoRAMoE, task: str) -> list[torch.Tensor | None]:
    return [p.grad for n, p in moe.named_parameters()
            if f".lora_A.{task}." in n or f".lora_B.{task}." in n]


def test_the_input_embeddings_are_the_wrapped_models():
    moe = tiny_moe()
    assert moe.get_input_embeddings() is moe.model.get_input_embeddings()
    assert moe.get_input_embeddings() is moe.model.embeddings.word_embeddings


def test_smart_on_a_mixture_is_finite_positive_and_trains_the_active_expert_only():
    moe = tiny_moe().train()
    head = nn.Linear(H, 5)
    ids, mask = inputs()
    emb, fwd = hf_smart_inputs(moe, lambda out: head(out.pooler_output), ids, mask, task="sst")
    # the clean pass through forward_fn is the mixture's own sst forward
    direct = head(moe(task="sst", input_ids=ids, attention_mask=mask).pooler_output)
    logits = fwd(emb)
    torch.testing.assert_close(logits, direct, rtol=0, atol=1e-6)
    term = SmartLoss(kind="classification")(fwd, emb, logits, attention_mask=mask)
    assert torch.isfinite(term) and term.item() > 0
    term.backward()
    active = expert_grads(moe, "sst")
    assert active and all(g is not None and g.abs().sum() > 0 for g in active)
    assert all(g is None or not g.any() for g in expert_grads(moe, "qqp"))


def test_every_smart_pass_is_routed_like_the_merged_expert():
    """Same noise (same generator seed) on the mixture's qqp routing and on qqp merged into the
    base: the same SMART term, which would differ if a perturbed pass ran without the expert.
    A large ball, so the terms are far above float32's rounding."""
    moe = tiny_moe().eval()
    single = moe.merged("qqp").eval()
    head = nn.Linear(H, 1)
    ids, mask = inputs()

    def smart(*args, **kwargs):
        return SmartLoss(kind="binary", epsilon=0.1, noise_std=0.05, step_size=0.1,
                         generator=torch.Generator().manual_seed(7))(*args, **kwargs)

    terms = []
    for encoder, extra in ((moe, {"task": "qqp"}), (single, {})):
        emb, fwd = hf_smart_inputs(encoder, lambda out: head(out.pooler_output).squeeze(-1),
                                   ids, mask, **extra)
        terms.append(smart(fwd, emb, fwd(emb), attention_mask=mask))
    assert terms[0].item() > 1e-4
    torch.testing.assert_close(terms[0], terms[1], rtol=1e-3, atol=0)
    # and the other expert gives another term: the routing matters
    emb, fwd = hf_smart_inputs(moe, lambda out: head(out.pooler_output).squeeze(-1), ids, mask,
                               task="sst")
    other = smart(fwd, emb, fwd(emb), attention_mask=mask)
    assert not torch.allclose(other, terms[0], rtol=1e-2, atol=0)


def test_per_sample_routing_reaches_both_experts():
    moe = tiny_moe().train()
    head = nn.Linear(H, 5)
    ids, mask = inputs()
    route = ["sst", "qqp", "qqp", "sst"]
    emb, fwd = hf_smart_inputs(moe, lambda out: head(out.pooler_output), ids, mask, task=route)
    term = SmartLoss()(fwd, emb, fwd(emb), attention_mask=mask)
    assert torch.isfinite(term) and term.item() > 0
    term.backward()
    for task in TASKS:
        assert all(g is not None and g.abs().sum() > 0 for g in expert_grads(moe, task))


def test_a_wrapped_model_without_input_embeddings_is_a_type_error():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(4, 4)

        def forward(self, x):
            return self.query(x)

    moe = LoRAMoE(Plain(), tasks=TASKS, r=2, target_modules=["query"])
    with pytest.raises(TypeError, match=r"model: expected a wrapped model with "
                                        r"get_input_embeddings\(\).*got Plain"):
        moe.get_input_embeddings()
