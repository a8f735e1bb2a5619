"""MultiTaskOptimizer.stacked: one backward over the tasks' stacked batches gives each task's
gradient exactly.

References: each task's gradient from its own ``torch.autograd.grad`` (an explicit loop over
the tasks), and the optimizer's per-task path (a backward per task) on the same forward.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from mtlkit import MultiTaskOptimizer, UnsplittableModel
from mtlkit import weighting as weightings

ROWS = {"sst": 2, "qqp": 3, "sts": 4}
SEQ = 6


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=24, max_position_embeddings=16,
                        pad_token_id=0)
    return BertModel(config, add_pooling_layer=False)


class Model(torch.nn.Module):
    """A tiny BERT with one head per task; the tasks' batches go through it stacked."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.encoder = tiny_bert(seed)
        self.heads = torch.nn.ModuleDict({"sst": torch.nn.Linear(16, 5),
                                          "qqp": torch.nn.Linear(16, 1),
                                          "sts": torch.nn.Linear(16, 1)})

    def losses(self, step: int = 0, rows=ROWS) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(step)
        total = sum(rows.values())
        ids = torch.randint(1, 40, (total, SEQ), generator=g)
        ids[:, -2:] = 0  # padding: the padding embedding row gets no gradient
        mask = (ids != 0).long()
        cls = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        parts = dict(zip(rows, cls.split(list(rows.values())), strict=True))
        out = {}
        for t, h in parts.items():
            logits = self.heads[t](h)
            if t == "sst":
                out[t] = F.cross_entropy(logits, torch.randint(0, 5, (len(h),), generator=g))
            else:
                out[t] = (logits.squeeze(-1) - torch.randn(len(h), generator=g)).pow(2).mean()
        return out


def make(weighting, explicit: bool = True, seed: int = 0):
    model = Model(seed)
    model.train()  # dropout on: both paths see the same masks when seeded alike
    opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), weighting,
                             shared_params=list(model.encoder.parameters()) if explicit else None)
    return model, opt


def backward(opt, module, make_losses, stacked: bool, rows=ROWS):
    """``opt.backward`` of the losses ``make_losses()`` builds, inside ``opt.stacked`` or not
    (the forward runs inside the block: the layers record their inputs there)."""
    if stacked:
        with opt.stacked(module, rows):
            return opt.backward(make_losses())
    return opt.backward(make_losses())


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(weighting, stacked: bool, explicit: bool = True, calls: int = 1, rows=ROWS):
    model, opt = make(copy.deepcopy(weighting), explicit)
    opt.zero_grad()
    for call in range(calls):
        torch.manual_seed(100 + call)
        backward(opt, model.encoder, lambda c=call: model.losses(c, rows), stacked, rows)
    return model, opt


def assert_same_grads(a: dict, b: dict) -> None:
    """Equal up to float32 rounding of the largest gradient (the key biases' true gradient is
    zero: softmax ignores a shift common to a query's scores, so theirs is rounding only)."""
    assert a.keys() == b.keys()
    scale = max(max(v.abs().max().item() for v in a.values()), 1e-12)
    for name in a:
        torch.testing.assert_close(a[name] / scale, b[name] / scale, rtol=0, atol=2e-6,
                                   msg=name)


def test_each_task_row_is_that_tasks_own_gradient():
    model, opt = one_step(weightings.Mean(), stacked=True)
    shared = list(model.encoder.parameters())
    fresh = Model()
    fresh.train()
    torch.manual_seed(100)  # the same dropout masks as the step's forward
    losses = fresh.losses(0)
    rows = opt._steps.grads.rows(len(ROWS))
    assert len(rows) == 1
    for i, loss in enumerate(losses.values()):
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            loss, list(fresh.encoder.parameters()), retain_graph=True, allow_unused=False)])
        scale = ref.abs().max()
        torch.testing.assert_close(rows[0][i] / scale, ref / scale, rtol=0, atol=2e-6)
    assert len(shared) == len(list(fresh.encoder.parameters()))


@pytest.mark.parametrize("name", ["upgrad", "mgda", "pcgrad", "nash_mtl", "sum"])
def test_stacked_equals_a_backward_per_task(name):
    weighting = weightings.by_name(name)
    stacked, s_opt = one_step(weighting, stacked=True)
    plain, p_opt = one_step(weighting, stacked=False)
    assert_same_grads(grads_of(stacked), grads_of(plain))
    torch.testing.assert_close(s_opt.last_stats.weights, p_opt.last_stats.weights,
                               rtol=1e-5, atol=1e-6)
    # the heads got their task's plain gradient, the padding embedding row none
    pad = stacked.encoder.embeddings.word_embeddings.weight.grad[0]
    assert torch.count_nonzero(pad) == 0


def test_automatic_shared_parameters_and_accumulation():
    weighting = weightings.UPGrad()
    stacked, _ = one_step(weighting, stacked=True, explicit=False, calls=2)
    plain, _ = one_step(weighting, stacked=False, explicit=False, calls=2)
    assert_same_grads(grads_of(stacked), grads_of(plain))


def test_a_task_with_no_rows_contributes_nothing():
    rows = {"sst": 3, "qqp": 0, "sts": 2}
    model, opt = make(weightings.Sum())
    with opt.stacked(model.encoder, rows):
        losses = model.losses(0, rows)
        losses["qqp"] = model.heads["qqp"].weight.sum() * 0.0  # a loss of no rows
        opt.backward(losses)
    assert torch.count_nonzero(opt._steps.grads.rows(3)[0][1]) == 0


def test_grad_scaler_sees_the_unscaled_gradients():
    def run(stacked):
        model, _ = make(weightings.NashMTL())
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 weightings.NashMTL(),
                                 shared_params=list(model.encoder.parameters()),
                                 grad_scaler=scaler)
        torch.manual_seed(100)
        backward(opt, model.encoder, lambda: model.losses(0), stacked)
        return grads_of(model)

    assert_same_grads(run(True), run(False))


def test_bf16_autocast_matches_the_per_task_path():
    def run(stacked):
        model, opt = make(weightings.UPGrad())
        torch.manual_seed(100)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backward(opt, model.encoder, lambda: model.losses(0), stacked)
        return grads_of(model)

    a, b = run(True), run(False)
    for name in a:
        scale = a[name].abs().max().clamp_min(1e-12)
        torch.testing.assert_close(a[name] / scale, b[name] / scale, rtol=0, atol=3e-2,
                                   msg=name)


def test_loss_weighting_makes_the_block_a_no_op():
    weighting = weightings.by_name("dwa", num_tasks=3)
    stacked, _ = one_step(weighting, stacked=True)
    plain, _ = one_step(weighting, stacked=False)
    assert_same_grads(grads_of(stacked), grads_of(plain))


def test_the_block_leaves_the_model_as_it_was():
    model, opt = make(weightings.UPGrad())
    with pytest.raises(ZeroDivisionError), opt.stacked(model.encoder, ROWS):
        model.losses(0)
        raise ZeroDivisionError
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with opt.stacked(model.encoder, ROWS):
        opt.backward(model.losses(0))
    assert all(p.requires_grad for p in model.parameters())
    opt.step()


class Body(torch.nn.Module):
    """Embedding, Linear and LayerNorm layers in a random order of widths."""

    def __init__(self, widths: list[int], tied: bool) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, widths[0], padding_idx=0)
        self.layers = torch.nn.ModuleList()
        for a, b in itertools.pairwise(widths):
            self.layers.append(torch.nn.Linear(a, b))
            self.layers.append(torch.nn.LayerNorm(b))
        self.tied = tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        last = self.layers[-2]
        if self.tied and last.in_features == last.out_features:
            h = h + last(h)  # one layer called twice: both calls add to its gradient
        return h.mean(1)


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       seed=st.integers(0, 2**16), tied=st.booleans())
def test_rows_split_exactly_for_any_stack(counts, widths, seed, tied):
    torch.manual_seed(seed)
    body = Body(widths, tied).double()
    heads = [torch.nn.Linear(widths[-1], 1).double() for _ in counts]
    ids = torch.randint(0, 7, (sum(counts), 3))
    targets = torch.randn(sum(counts), dtype=torch.float64)

    def losses():
        h = body(ids).split(counts)
        y = targets.split(counts)
        return {str(i): (heads[i](h[i]).squeeze(-1) - y[i]).pow(2).sum() * (i + 1)
                for i in range(len(counts))}

    params = list(body.parameters())
    opt = MultiTaskOptimizer(torch.optim.SGD(params + [p for h in heads for p in h.parameters()],
                                             lr=0.1), weightings.Sum(), shared_params=params)
    with opt.stacked(body, counts):
        opt.backward(losses())
    rows = opt._steps.grads.rows(len(counts))[0]
    reference = losses()
    for i, loss in enumerate(reference.values()):
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params,
                                                                     retain_graph=True)])
        torch.testing.assert_close(rows[i], ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- bad input
class WithRawParameter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * self.scale


class LinearUsedDirectly(torch.nn.Module):
    """Uses its child's weight without calling the child (as nn.MultiheadAttention does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return F.linear(x, self.lin.weight, self.lin.bias)


def _opt_for(body, heads=2):
    head_list = [torch.nn.Linear(4, 1) for _ in range(heads)]
    params = [*body.parameters(), *(p for h in head_list for p in h.parameters())]
    return MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), weightings.UPGrad(),
                              shared_params=list(body.parameters())), head_list


def test_unsupported_layer_is_named():
    body = WithRawParameter()
    opt, _ = _opt_for(body)
    with pytest.raises(UnsplittableModel, match="WithRawParameter"), opt.stacked(body, [2, 2]):
        pass


def test_shared_parameter_outside_the_module_is_refused():
    body, other = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    head = torch.nn.Linear(4, 1)
    params = [*body.parameters(), *other.parameters(), *head.parameters()]
    opt = MultiTaskOptimizer(torch.optim.SGD(params, lr=0.1), "upgrad",
                             shared_params=[*body.parameters(), *other.parameters()])
    with pytest.raises(ValueError, match="outside"), opt.stacked(body, [2, 2]):
        pass


def test_a_layer_seeing_other_rows_is_named():
    body = torch.nn.Sequential(torch.nn.Linear(4, 4))
    opt, _ = _opt_for(body)
    expected = r"expected the stacked batch of 4 rows.*got 3 at '0'"
    with pytest.raises(UnsplittableModel, match=expected), opt.stacked(body, [2, 2]):
        body(torch.randn(3, 4))


def test_weight_used_outside_its_layer_is_refused():
    body = LinearUsedDirectly()
    opt, heads = _opt_for(body)
    with opt.stacked(body, [2, 2]):
        h = body(torch.randn(4, 4)).split(2)
        with pytest.raises(UnsplittableModel, match="outside its own layer"):
            opt.backward([heads[0](h[0]).sum(), heads[1](h[1]).sum()])
    assert opt._steps.pending is None
    assert body.lin.weight.grad is None  # the failed step left nothing behind


@pytest.mark.parametrize("rows, error, match", [
    ({"a": -1, "b": 2}, ValueError, r"rows\['a'\]: expected a row count >= 0, got -1"),
    ({"a": 1.5}, ValueError, r"rows\['a'\]"),
    ("ab", TypeError, "rows: expected a mapping"),
    ({}, ValueError, "rows: expected at least one task"),
])
def test_bad_rows(rows, error, match):
    body = torch.nn.Linear(4, 4)
    opt, _ = _opt_for(body)
    with pytest.raises(error, match=match), opt.stacked(body, rows):
        pass


def test_misuse_inside_the_block():
    body = torch.nn.Linear(4, 4)
    opt, heads = _opt_for(body)
    with opt.stacked(body, {"a": 2, "b": 2}):
        with pytest.raises(RuntimeError, match="no enclosing stacked"), \
                opt.stacked(body, {"a": 2, "b": 2}):
            pass
        h = body(torch.randn(4, 4)).split(2)
        with pytest.raises(ValueError, match=r"losses: expected the tasks of stacked\(\)"):
            opt.backward({"a": heads[0](h[0]).sum(), "c": heads[1](h[1]).sum()})
        h = body(torch.randn(4, 4)).split(2)
        with pytest.raises(RuntimeError, match=r"with the optimizer's backward\(losses\)"):
            (heads[0](h[0]).sum() + heads[1](h[1]).sum()).backward()
    with pytest.raises(TypeError, match=r"module: expected a torch\.nn\.Module"), \
            opt.stacked("body", [2, 2]):
        pass


# ---------------------------------------------------------------------- other encoders
def tiny_roberta():
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=24,
                           max_position_embeddings=20, pad_token_id=1)
    return RobertaModel(config, add_pooling_layer=False)


def bert_with_lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query", "value"]))


def tiny_gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16))


@pytest.mark.parametrize("build", [tiny_roberta, bert_with_lora, tiny_gpt2],
                         ids=["roberta", "lora", "gpt2"])
def test_other_encoders_split_exactly(build):
    def run(stacked):
        encoder = build()
        encoder.train()
        heads = torch.nn.ModuleList([torch.nn.Linear(16, 1) for _ in ROWS])
        shared = [p for p in encoder.parameters() if p.requires_grad]
        opt = MultiTaskOptimizer(torch.optim.SGD([*shared, *heads.parameters()], lr=0.1),
                                 weightings.UPGrad(), shared_params=shared)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(2, 40, (sum(ROWS.values()), SEQ), generator=g)

        def losses():
            cls = encoder(input_ids=ids).last_hidden_state[:, 0].split(list(ROWS.values()))
            return {t: heads[i](h).pow(2).mean() * (i + 1)
                    for i, (t, h) in enumerate(zip(ROWS, cls, strict=True))}

        torch.manual_seed(100)
        backward(opt, encoder, lambda: losses(), stacked)
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    a, b = run(True), run(False)
    assert a and len(a) == len(b)
    assert_same_grads(a, b)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_splits_exactly(reentrant):
    def run(stacked):
        model, opt = make(weightings.UPGrad())
        model.encoder.gradient_checkpointing_enable({"use_reentrant": reentrant})
        torch.manual_seed(100)
        backward(opt, model.encoder, lambda: model.losses(0), stacked)
        return grads_of(model)

    assert_same_grads(run(True), run(False))


def test_a_shared_parameter_frozen_later_stays_frozen():
    def run(stacked):
        model, opt = make(weightings.UPGrad())
        frozen = model.encoder.encoder.layer[0].attention.self.query
        for step in range(2):
            if step == 1:  # gradual unfreezing in reverse: frozen after a first step
                frozen.weight.requires_grad_(False)
                frozen.weight.grad = None
            opt.zero_grad()
            torch.manual_seed(100 + step)
            backward(opt, model.encoder, lambda s=step: model.losses(s), stacked)
            opt.step()
        assert not frozen.weight.requires_grad
        return grads_of(model)

    a, b = run(True), run(False)
    assert "encoder.encoder.layer.0.attention.self.query.weight" not in a
    assert_same_grads(a, b)
