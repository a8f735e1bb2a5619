"""The pipeline's AdamW (``multitask_bert/optim.py``): fused where it can be, and the same update
as PyTorch's for-loop AdamW with the paper's betas, step by step on a small BERT."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from multitask_bert.layer_decay import layerwise_param_groups
from multitask_bert.model import MultiTaskBert
from multitask_bert.optim import adamw, can_fuse


def _bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32),
                     add_pooling_layer=False)


def test_fused_update_matches_the_for_loop_adamw() -> None:
    models = [_bert().eval(), _bert().eval()]  # eval: no dropout masks to differ
    fused = adamw(models[0].parameters(), lr=1e-2)
    plain = torch.optim.AdamW(models[1].parameters(), lr=1e-2, betas=(0.9, 0.99),
                              weight_decay=0.0, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    assert (fused.defaults["betas"], fused.defaults["weight_decay"]) == ((0.9, 0.99), 0.0)
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        for model, opt in zip(models, (fused, plain), strict=True):
            opt.zero_grad()
            model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        # the kernels round differently; a difference of 1% of one step (lr 1e-2) is rounding,
        # a different update rule (betas, bias correction, decay) would move whole steps
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_parameter_groups_are_fused_with_their_own_rates() -> None:
    model = MultiTaskBert(_bert(), 16)
    opt = adamw(layerwise_param_groups(model, 1e-3, 0.5), lr=1e-3)
    assert opt.defaults["fused"]
    rates = sorted({g["lr"] for g in opt.param_groups})
    assert len(rates) > 1 and rates[-1] == 1e-3


def test_not_fused_where_no_kernel_takes_the_parameters() -> None:
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not can_fuse([meta]) and not can_fuse([])
    assert not adamw([meta], lr=1e-3).defaults["fused"]
