"""SmartLoss against naive references (the paper's formulas, explicit loops) and properties."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import smart_pytorch as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkit import SmartLoss
from mtlkit.smart import functional

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- references
def naive_sym_kl(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric KL of softmax laws, explicit loops over rows and classes, in float64."""
    rows_a, rows_b = a.double().reshape(-1, a.shape[-1]), b.double().reshape(-1, b.shape[-1])
    total = 0.0
    for ra, rb in zip(rows_a.tolist(), rows_b.tolist(), strict=True):
        za = math.log(sum(math.exp(v) for v in ra))
        zb = math.log(sum(math.exp(v) for v in rb))
        for va, vb in zip(ra, rb, strict=True):
            p, q = math.exp(va - za), math.exp(vb - zb)
            total += p * math.log(p / q) + q * math.log(q / p)
    return total / rows_a.shape[0]


def naive_sym_kl_bernoulli(a: torch.Tensor, b: torch.Tensor) -> float:
    total = 0.0
    for va, vb in zip(a.double().flatten().tolist(), b.double().flatten().tolist(), strict=True):
        p, q = 1 / (1 + math.exp(-va)), 1 / (1 + math.exp(-vb))
        total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        total += q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    return total / a.numel()


def ref_divergence(kind: str, a: torch.Tensor, b: torch.Tensor,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """SMART's ell_s from the definitions KL(p||q) + KL(q||p), differentiable, in float64 (the
    definitional form cancels badly in float32 near p = q)."""
    a, b = a.to(dtype), b.to(dtype)
    if kind == "regression":
        return ((a - b) ** 2).mean()
    if kind == "binary":
        p, q = torch.sigmoid(a), torch.sigmoid(b)
        kl_pq = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
        kl_qp = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
        return (kl_pq + kl_qp).mean()
    p, q = torch.softmax(a, dim=-1), torch.softmax(b, dim=-1)
    return ((p * torch.log(p / q)).sum(-1) + (q * torch.log(q / p)).sum(-1)).mean()


def naive_smart(model, emb, mask, *, kind, epsilon, noise_std, step_size, num_steps, norm,
                project, seed):
    """SMART's Algorithm 1 written out token by token; returns (R_s, final noise)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(emb.shape, generator=gen, dtype=emb.dtype) * noise_std
    if mask is not None:
        noise = noise * mask.unsqueeze(-1).to(emb.dtype)
    clean = model(emb)
    for _ in range(num_steps):
        noise = noise.detach().requires_grad_(True)
        div = ref_divergence(kind, model(emb.detach() + noise), clean.detach())
        (grad,) = torch.autograd.grad(div, noise)
        new = torch.zeros_like(noise)
        for idx in range(emb.shape[0]):
            for t in range(emb.shape[1]):
                if mask is not None and mask[idx, t] == 0:
                    continue
                g, x = grad[idx, t], noise[idx, t].detach()
                size = g.abs().max() if norm == "linf" else g.norm()
                if project:
                    x = x + step_size * (g / size if size > 0 else torch.zeros_like(g))
                    if norm == "linf":
                        x = torch.clamp(x, -epsilon, epsilon)
                    elif x.norm() > epsilon:
                        x = x * epsilon / x.norm()
                else:
                    x = x + step_size * g
                    size = x.abs().max() if norm == "linf" else x.norm()
                    x = x / size if size > 0 else x
                new[idx, t] = x
        noise = new
    return ref_divergence(kind, model(emb + noise), clean), noise


class Recorder:
    """A forward_fn that keeps the inputs it was called with."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, e):
        self.inputs.append(e.detach().clone())
        return self.fn(e)


def tiny_model(hidden=6, classes=3, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(hidden, classes)
    return lin, (lambda e: lin(torch.tanh(e).mean(dim=-2)))


# ----------------------------------------------------------------------------- divergences
def test_symmetric_kl_matches_hand_formula():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    got = functional.divergence(a, b, "classification").item()
    assert got == pytest.approx(naive_sym_kl(a, b), rel=1e-5)
    assert got == pytest.approx(functional.divergence(b, a, "classification").item(), rel=1e-6)


def test_binary_kind_is_the_bernoulli_symmetric_kl_in_any_shape():
    torch.manual_seed(1)
    a, b = torch.randn(7, 1), torch.randn(7, 1)
    ref = naive_sym_kl_bernoulli(a, b)
    assert functional.divergence(a, b, "binary").item() == pytest.approx(ref, rel=1e-5)
    assert functional.divergence(a[:, 0], b[:, 0], "binary").item() == pytest.approx(ref, rel=1e-5)
    # two-class logits [0, z] under "classification" are the same law as z under "binary"
    two = functional.divergence(F.pad(a, (1, 0)), F.pad(b, (1, 0)), "classification")
    assert two.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("shape", [(7, 1), (7,), (2, 3, 1), ()])
def test_a_single_logit_under_classification_is_refused_and_points_to_binary(shape):
    a = torch.randn(shape)
    with pytest.raises(ValueError, match=r"kind: expected 'binary'.*got 'classification'"):
        functional.divergence(a, a, "classification")
    _lin, fn = tiny_model(classes=1)
    emb = torch.randn(3, 4, 6)
    match = r"kind: expected 'binary'.*clean_output of shape \(3, 1\)"
    with pytest.raises(ValueError, match=match):
        SmartLoss(kind="classification")(fn, emb, fn(emb))
    with pytest.raises(ValueError, match="kind: expected 'binary'"):
        SmartLoss(kind="classification").divergence(a, a)


def test_binary_smart_loss_matches_the_naive_algorithm_on_one_logit():
    _lin, fn = tiny_model(classes=1)
    one_logit = lambda e: fn(e).squeeze(-1)  # noqa: E731  (B,): one logit per example
    emb = torch.randn(3, 4, 6)
    kw = dict(kind="binary", epsilon=2e-2, noise_std=1e-2, step_size=5e-2, num_steps=1,
              norm="linf", project=True)
    ref, _ = naive_smart(one_logit, emb, None, seed=5, **kw)
    got = SmartLoss(**kw, generator=torch.Generator().manual_seed(5))(
        one_logit, emb, one_logit(emb))
    assert got.item() == pytest.approx(ref.item(), rel=1e-4) and got.item() > 0


def test_module_equals_the_public_functional_form():
    _lin, fn = tiny_model()
    emb = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    kw = dict(kind="classification", epsilon=1e-2, noise_std=1e-2, step_size=1e-2,
              num_steps=2, norm="l2", project=True)
    module = SmartLoss(**kw, generator=torch.Generator().manual_seed(1))(fn, emb, fn(emb), mask)
    func = functional.smart_loss(fn, emb, fn(emb), mask, **kw,
                                 generator=torch.Generator().manual_seed(1))
    assert module.item() == func.item() > 0
    # one source of defaults: the module's and the function's agree
    module_defaults = inspect.signature(SmartLoss).parameters
    for name, param in inspect.signature(functional.smart_loss).parameters.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            assert module_defaults[name].default == param.default, name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_raise_a_clear_error(bad):
    _lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6)
    emb[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"embeddings: expected finite values, got 1 NaN"):
        SmartLoss()(fn, emb, fn(emb))
    with pytest.raises(ValueError, match="embeddings: expected finite"):
        functional.smart_loss(fn, emb, fn(emb), num_steps=0)


def test_regression_is_mse_and_float32():
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)
    b = torch.tensor([0.0, 2.0, 1.0], dtype=torch.bfloat16)
    out = functional.divergence(a, b, "regression")
    assert out.dtype == torch.float32 and out.item() == pytest.approx((1 + 0 + 9) / 3)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5), classes=st.integers(1, 6),
    kind=st.sampled_from(["classification", "binary", "regression"]), seed=st.integers(0, 99),
)
def test_divergence_zero_on_identical_nonnegative_symmetric(rows, classes, kind, seed):
    if kind == "classification" and classes == 1:
        classes = 2  # one logit is kind="binary" (refused under "classification")
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rows, classes, generator=g) * 3, torch.randn(rows, classes, generator=g)
    assert functional.divergence(a, a, kind).item() == 0.0
    d = functional.divergence(a, b, kind).item()
    assert d >= 0 and math.isfinite(d)
    assert d == pytest.approx(functional.divergence(b, a, kind).item(), rel=1e-5, abs=1e-7)
    assert d == pytest.approx(ref_divergence(kind, a, b).item(), rel=1e-4, abs=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"target: expected the shape of input \(2, 3\)"):
        functional.divergence(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="kind: expected one of"):
        functional.divergence(torch.zeros(2, 3), torch.zeros(2, 3), kind="ranking")


# ----------------------------------------------------------------------------- the algorithm
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("project", [True, False])
@pytest.mark.parametrize("num_steps", [0, 1, 2])
def test_matches_naive_algorithm(norm, project, num_steps):
    _lin, fn = tiny_model()
    emb = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    kw = dict(kind="classification", epsilon=2e-2, noise_std=1e-2, step_size=5e-2,
              num_steps=num_steps, norm=norm, project=project)
    ref, ref_noise = naive_smart(fn, emb, mask, seed=3, **kw)
    rec = Recorder(fn)
    got = SmartLoss(**kw, generator=torch.Generator().manual_seed(3))(rec, emb, fn(emb), mask)
    assert len(rec.inputs) == num_steps + 1
    # float32 (ours) against float64 (the reference): 1e-3 of the ball's radius
    torch.testing.assert_close(rec.inputs[-1] - emb, ref_noise.float(), atol=2e-5, rtol=0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-9)


def test_gradients_reach_parameters_through_both_sides():
    lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6, requires_grad=True)
    smart = SmartLoss(epsilon=0.1, noise_std=0.05, generator=torch.Generator().manual_seed(0))
    rec = Recorder(fn)
    reg = smart(rec, emb, fn(emb))
    grads = torch.autograd.grad(reg, [lin.weight, emb])
    noise = rec.inputs[-1] - emb.detach()
    full = ref_divergence("classification", fn(emb + noise), fn(emb))
    ref = torch.autograd.grad(full, [lin.weight, emb])
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r)
    one_sided = ref_divergence("classification", fn(emb + noise), fn(emb).detach())
    (g1,) = torch.autograd.grad(one_sided, [lin.weight])
    assert not torch.allclose(g1, grads[0]), "the clean side must carry gradient too"
    assert grads[0].abs().sum() > 0


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3), tokens=st.integers(1, 5), hidden=st.integers(1, 6),
    norm=st.sampled_from(["linf", "l2"]), project=st.booleans(), steps=st.integers(1, 2),
    data=st.data(),
)
def test_mask_and_ball_properties(batch, tokens, hidden, norm, project, steps, data):
    mask = torch.tensor(data.draw(st.lists(
        st.lists(st.integers(0, 1), min_size=tokens, max_size=tokens),
        min_size=batch, max_size=batch)))
    _lin, fn = tiny_model(hidden=hidden)
    emb = torch.randn(batch, tokens, hidden)
    rec = Recorder(fn)
    eps = 1e-3
    reg = SmartLoss(epsilon=eps, noise_std=1e-2, step_size=1e-2, num_steps=steps, norm=norm,
                    project=project)(rec, emb, fn(emb), attention_mask=mask)
    assert torch.isfinite(reg) and reg.item() >= 0
    delta = rec.inputs[-1] - emb
    pad = mask == 0
    assert torch.equal(rec.inputs[-1][pad], emb[pad]), "padding positions must get no noise"
    size = delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)
    if project:
        assert (size <= eps + 1e-6).all(), "projection must keep the noise in the ball"
    else:
        real = size[~pad]
        torch.testing.assert_close(real, torch.ones_like(real), atol=1e-4, rtol=0)


def test_zero_steps_is_random_noise_unprojected():
    _lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6)
    rec = Recorder(fn)
    SmartLoss(num_steps=0, noise_std=0.5, epsilon=1e-5,
              generator=torch.Generator().manual_seed(7))(rec, emb, fn(emb))
    assert len(rec.inputs) == 1
    expected = torch.randn(emb.shape, generator=torch.Generator().manual_seed(7)) * 0.5
    torch.testing.assert_close(rec.inputs[0] - emb, expected)


def test_sharper_model_is_less_smooth():
    lin, fn = tiny_model(hidden=8, classes=4)
    emb = torch.randn(6, 5, 8)
    smart = SmartLoss(epsilon=1e-2, noise_std=1e-3)
    flat = smart(fn, emb, fn(emb)).item()
    with torch.no_grad():
        lin.weight.mul_(10)
    sharp = smart(fn, emb, fn(emb)).item()
    assert sharp > 10 * flat > 0


def test_ascent_beats_random_noise():
    _lin, fn = tiny_model(hidden=8, classes=4)
    emb = torch.randn(6, 5, 8)
    random = SmartLoss(num_steps=0, noise_std=1e-3, generator=torch.Generator().manual_seed(0))
    attack = SmartLoss(num_steps=1, noise_std=1e-3, epsilon=1e-3, step_size=1e-2,
                       generator=torch.Generator().manual_seed(0))
    assert attack(fn, emb, fn(emb)).item() > random(fn, emb, fn(emb)).item()


@pytest.mark.parametrize("project", [True, False])
def test_output_independent_of_input_gives_zero(project):
    bias = torch.nn.Parameter(torch.randn(3))
    fn = lambda e: bias.expand(e.shape[0], 3)  # noqa: E731
    emb = torch.randn(2, 4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = SmartLoss(project=project)(fn, emb, fn(emb))
        assert reg.item() == 0.0
        reg.backward()
    assert torch.equal(bias.grad, torch.zeros(3))
    const = lambda e: torch.zeros(e.shape[0], 3)  # noqa: E731  (no grad at all)
    assert SmartLoss()(const, emb, const(emb)).item() == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gives_zero_with_warning_and_no_nan_in_model(bad):
    lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6)

    def poisoned(e):
        out = fn(e)
        return out * torch.tensor([bad, 1.0, 1.0]) if not torch.equal(e, emb) else out

    logits = fn(emb)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        reg = SmartLoss()(poisoned, emb, logits)
    assert reg.item() == 0.0 and not reg.requires_grad
    (logits.sum() + reg).backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_bfloat16_model_output_is_compared_in_float32():
    lin, fn = tiny_model()
    lin.to(torch.bfloat16)
    emb = torch.randn(2, 3, 6, dtype=torch.bfloat16)
    reg = SmartLoss(epsilon=0.05, noise_std=0.05)(fn, emb, fn(emb))
    assert reg.dtype == torch.float32 and torch.isfinite(reg)


def test_bool_mask_accepted():
    _lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    rec = Recorder(fn)
    SmartLoss()(rec, emb, fn(emb), attention_mask=mask)
    assert torch.equal(rec.inputs[-1][~mask], emb[~mask])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(kind="ranking"), ValueError, "kind"),
        (dict(norm="l1"), ValueError, "norm"),
        (dict(epsilon=0.0), ValueError, "epsilon"),
        (dict(epsilon="1e-5"), TypeError, "epsilon"),
        (dict(noise_std=-1.0), ValueError, "noise_std"),
        (dict(step_size=float("nan")), ValueError, "step_size"),
        (dict(num_steps=-1), ValueError, "num_steps"),
        (dict(num_steps=1.0), TypeError, "num_steps"),
        (dict(num_steps=True), TypeError, "num_steps"),
        (dict(project=1), TypeError, "project"),
        (dict(generator=0), TypeError, "generator"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        SmartLoss(**kwargs)


def test_call_validation():
    _lin, fn = tiny_model()
    emb = torch.randn(2, 3, 6)
    smart = SmartLoss()
    with pytest.raises(TypeError, match="forward_fn"):
        smart(None, emb, fn(emb))
    with pytest.raises(TypeError, match="embeddings"):
        smart(fn, emb.numpy(), fn(emb))
    with pytest.raises(ValueError, match="embeddings"):
        smart(fn, torch.ones(2, 3, 6, dtype=torch.long), fn(emb))
    with pytest.raises(ValueError, match="attention_mask"):
        smart(fn, emb, fn(emb), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="clean_output"):
        smart(fn, emb, fn(emb)[:1])
    with pytest.raises(TypeError, match=r"forward_fn: expected to return a torch\.Tensor"):
        smart(lambda e: {"logits": fn(e)}, emb, fn(emb))


def test_matches_smart_pytorch_in_normalized_mode():
    _lin, fn = tiny_model()
    emb = torch.randn(3, 4, 6)
    logits = fn(emb)
    div = lambda a, b: functional.divergence(a, b, "classification")  # noqa: E731
    # their epsilon is only a stabilizer added to the norm; ours divides exactly
    theirs = sp.SMARTLoss(eval_fn=fn, loss_fn=div, num_steps=1, step_size=1e-3, noise_var=1e-5,
                          epsilon=1e-12)
    torch.manual_seed(11)
    expected = theirs(emb, logits)
    torch.manual_seed(11)
    got = SmartLoss(project=False, noise_std=1e-5, step_size=1e-3)(fn, emb, logits)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
