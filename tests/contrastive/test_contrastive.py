"""SimCSELoss / info_nce against a naive double loop over explicit positives and negatives."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from mtlkit import SimCSELoss, info_nce


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _naive_direction(anchors, positives, negatives, ids, tau, weight) -> float:
    batch = len(anchors)
    total = 0.0
    for i in range(batch):
        positive = _cos(anchors[i], positives[i]) / tau
        denominator = 0.0
        for j in range(batch):
            if j != i and ids is not None and ids[j] == ids[i]:
                continue  # a false negative: same id as the anchor
            denominator += math.exp(_cos(anchors[i], positives[j]) / tau)
        for j in range(len(negatives or [])):
            bonus = weight if j == i else 0.0
            denominator += math.exp(_cos(anchors[i], negatives[j]) / tau + bonus)
        total += -(positive - math.log(denominator))
    return total / batch


def naive_loss(z1, z2, z3=None, ids=None, *, tau=0.05, symmetric=False, weight=0.0) -> float:
    """The loss by explicit loops, in Python floats (double precision)."""
    a, p = z1.double().tolist(), z2.double().tolist()
    n = None if z3 is None else z3.double().tolist()
    ids = None if ids is None else list(ids)
    loss = _naive_direction(a, p, n, ids, tau, weight)
    if symmetric:
        loss = (loss + _naive_direction(p, a, None, ids, tau, 0.0)) / 2
    return loss


def _batch(batch: int = 6, dim: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, batch, dim, generator=g, dtype=dtype).unbind(0)


# (with_z3, with_ids, symmetric, hard_negative_weight); a weight needs z3
CASES = [
    case
    for case in itertools.product([False, True], [False, True], [False, True], [0.0, 1.5])
    if case[0] or not case[3]
]


@pytest.mark.parametrize(("with_z3", "with_ids", "symmetric", "weight"), CASES)
def test_matches_naive_loop(with_z3, with_ids, symmetric, weight):
    z1, z2, z3 = _batch()
    z3 = z3 if with_z3 else None
    ids = [0, 1, 0, 2, 1, 3] if with_ids else None
    loss_fn = SimCSELoss(temperature=0.1, symmetric=symmetric, hard_negative_weight=weight)
    got = loss_fn(z1, z2, z3, ids=ids)
    want = naive_loss(z1, z2, z3, ids, tau=0.1, symmetric=symmetric, weight=weight)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    # float32 inputs agree with the double-precision loop too
    got32 = loss_fn(z1.float(), z2.float(), None if z3 is None else z3.float(), ids=ids)
    assert got32.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_match_autograd_of_reference(symmetric):
    z1, z2, z3 = (z.requires_grad_() for z in _batch(batch=4, dim=3))
    ids = torch.tensor([5, 5, 7, 8])

    def fn(a, b, c):
        return info_nce(a, b, c, ids, temperature=0.2, symmetric=symmetric,
                        hard_negative_weight=0.7)

    assert torch.autograd.gradcheck(fn, (z1, z2, z3))


def test_temperature_scaling_and_closed_form():
    # Orthonormal embeddings: cos = 1 on the diagonal, 0 elsewhere, so
    # loss = log(1 + (B - 1) * exp(-1 / tau)).
    batch = 5
    z = torch.eye(batch, 8, dtype=torch.float64)
    for tau in (0.05, 0.3, 1.0, 4.0):
        want = math.log1p((batch - 1) * math.exp(-1 / tau))
        assert info_nce(z, z, temperature=tau).item() == pytest.approx(want, rel=1e-12)
    # logits are cosines / tau: equal to cross-entropy of the scaled cosine matrix
    z1, z2, _ = _batch()
    cos = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
    for tau in (0.05, 0.5, 2.0):
        want = F.cross_entropy(cos / tau, torch.arange(len(z1)))
        torch.testing.assert_close(info_nce(z1, z2, temperature=tau), want)


def test_scale_invariance_per_row():
    z1, z2, z3 = _batch()
    scale = torch.rand(len(z1), 1, dtype=z1.dtype) * 10 + 0.1
    torch.testing.assert_close(info_nce(z1 * scale, z2, z3 * scale.flip(0)), info_nce(z1, z2, z3))


def test_symmetric_is_mean_of_both_directions():
    z1, z2, _ = _batch()
    both = SimCSELoss(symmetric=True)(z1, z2)
    one_way = SimCSELoss()
    torch.testing.assert_close(both, (one_way(z1, z2) + one_way(z2, z1)) / 2)


def test_ids_mask_equals_dropping_columns():
    z1, z2, _ = _batch(batch=4)
    ids = torch.tensor([0, 1, 0, 2])
    got = info_nce(z1, z2, ids=ids, temperature=0.1)
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.1
    per_row = []
    for i in range(4):
        keep = [j for j in range(4) if j == i or ids[j] != ids[i]]
        row = logits[i, keep]
        per_row.append(torch.logsumexp(row, 0) - logits[i, i])
    torch.testing.assert_close(got, torch.stack(per_row).mean())
    # distinct ids change nothing
    torch.testing.assert_close(info_nce(z1, z2, ids=[3, 1, 2, 0]), info_nce(z1, z2))


def test_no_valid_negative_gives_zero_loss_and_backward_works():
    z1, z2, _ = (z.requires_grad_() for z in _batch(batch=3))
    loss = info_nce(z1, z2, ids=[4, 4, 4], symmetric=True)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z1.grad, torch.zeros_like(z1))
    assert torch.isfinite(z2.grad).all()


def test_bfloat16_close_to_float32():
    z1, z2, z3 = _batch(batch=32, dim=64, dtype=torch.float32)
    ref = info_nce(z1, z2, z3, ids=torch.arange(32) % 30, symmetric=True)
    low = [z.bfloat16().requires_grad_() for z in (z1, z2, z3)]
    got = info_nce(*low, ids=torch.arange(32) % 30, symmetric=True)
    assert got.dtype == torch.float32  # the softmax runs in float32
    assert got.item() == pytest.approx(ref.item(), rel=3e-2)
    got.backward()
    assert all(z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad).all() for z in low)


def test_matches_sentence_transformers_mnrl():
    z1, z2, z3 = _batch(batch=8, dim=16, dtype=torch.float32)
    mnrl = MultipleNegativesRankingLoss(None, scale=20.0)
    want = mnrl.compute_loss_from_embeddings([z1, z2], None)
    torch.testing.assert_close(SimCSELoss(0.05)(z1, z2), want)
    torch.testing.assert_close(
        SimCSELoss(0.05)(z1, z2, z3), mnrl.compute_loss_from_embeddings([z1, z2, z3], None)
    )
    sym = MultipleNegativesRankingLoss(
        None, scale=20.0, directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
    )
    torch.testing.assert_close(
        SimCSELoss(0.05, symmetric=True)(z1, z2), sym.compute_loss_from_embeddings([z1, z2], None)
    )


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(2, 7),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    with_z3=st.booleans(),
    symmetric=st.booleans(),
    data=st.data(),
)
def test_permuting_the_batch_leaves_the_loss_unchanged(batch, dim, seed, with_z3, symmetric, data):
    z1, z2, z3 = _batch(batch, dim, seed)
    z3 = z3 if with_z3 else None
    ids = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)))
    perm = torch.tensor(data.draw(st.permutations(range(batch))))
    weight = 0.5 if with_z3 else 0.0
    loss = SimCSELoss(0.1, symmetric=symmetric, hard_negative_weight=weight)
    before = loss(z1, z2, z3, ids)
    after = loss(z1[perm], z2[perm], None if z3 is None else z3[perm], ids[perm])
    torch.testing.assert_close(before, after)
    want = naive_loss(z1, z2, z3, ids.tolist(), tau=0.1, symmetric=symmetric, weight=weight)
    assert before.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_bad_input():
    z1, z2, z3 = _batch(batch=3, dim=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="z2: expected the shape of z1"):
        info_nce(z1, z2[:2])
    with pytest.raises(ValueError, match="z3: expected the shape of z1"):
        info_nce(z1, z2, z3[:, :2])
    with pytest.raises(ValueError, match="z1: expected a 2-D"):
        info_nce(z1[0], z2[0])
    with pytest.raises(TypeError, match="z1: expected a floating-point"):
        info_nce(z1.long(), z2)
    with pytest.raises(TypeError, match=r"z2: expected a torch\.Tensor"):
        info_nce(z1, z2.tolist())
    with pytest.raises(ValueError, match="z1: expected a batch of 2 or more rows"):
        info_nce(z1[:1], z2[:1])
    assert torch.isfinite(info_nce(z1[:1], z2[:1], z3[:1]))  # one hard negative is enough
    with pytest.raises(ValueError, match="z1: expected a non-empty batch"):
        info_nce(z1[:0], z2[:0])
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            SimCSELoss(temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            info_nce(z1, z2, temperature=bad)
    for bad in ("0.05", True, None):
        with pytest.raises(TypeError, match="temperature"):
            SimCSELoss(temperature=bad)
    with pytest.raises(ValueError, match="hard_negative_weight: expected a finite"):
        SimCSELoss(hard_negative_weight=float("inf"))
    with pytest.raises(ValueError, match="z3: expected hard negatives"):
        SimCSELoss(hard_negative_weight=1.0)(z1, z2)
    with pytest.raises(ValueError, match=r"ids: expected shape \(3,\)"):
        info_nce(z1, z2, ids=[0, 1])
    with pytest.raises(TypeError, match="ids: expected integer values"):
        info_nce(z1, z2, ids=torch.zeros(3))
    with pytest.raises(TypeError, match="ids: expected a tensor or a sequence"):
        info_nce(z1, z2, ids="abc")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["z1", "z2", "z3"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_non_finite_embeddings_raise_an_error_naming_the_input(bad, where, symmetric):
    z = dict(zip(("z1", "z2", "z3"), _batch(batch=4, dim=3, dtype=torch.float32), strict=True))
    z[where] = z[where].clone()
    z[where][2, 1] = bad
    ids = [0, 1, 2, 2]  # row 2's twin is masked as a false negative: the check must still see it
    with pytest.raises(ValueError, match=rf"{where}: expected finite embeddings, got NaN or "
                                         r"infinite values in 1 rows \(first: \[2\]\)"):
        SimCSELoss(symmetric=symmetric)(z["z1"], z["z2"], z["z3"], ids=ids)


def test_overflowing_logits_are_reported_with_the_temperature():
    z1, z2, _ = _batch(batch=3, dim=4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"logits overflowed \(temperature=1e-40\)"):
        info_nce(z1, z2, temperature=1e-40)


def test_repr_lists_options():
    assert "temperature=0.1, symmetric=True" in repr(SimCSELoss(0.1, symmetric=True))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than fighting for a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_bert(dropout: float):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    model = transformers.BertModel(config).train()

    def encode(ids):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]

    return model, encode


def test_unsupervised_views_differ_by_dropout_and_gradients_reach_the_encoder(one_thread):
    model, encode = _tiny_bert(dropout=0.1)
    ids = torch.randint(1, 50, (8, 10))
    view1, view2 = encode(ids), encode(ids)
    assert not torch.allclose(view1, view2)
    loss = SimCSELoss(temperature=0.05)(view1, view2)
    assert loss.item() > 0
    loss.backward()
    assert model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_supervised_simcse_with_hard_negatives_trains_a_tiny_bert(one_thread):
    model, encode = _tiny_bert(dropout=0.0)
    anchors = torch.randint(1, 50, (16, 10))
    positives = anchors.clone()
    positives[:, ::3] = torch.randint(1, 50, (16, 4))  # a noisy copy: a "paraphrase"
    negatives = torch.randint(1, 50, (16, 10))
    loss_fn = SimCSELoss(temperature=0.05)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = loss_fn(encode(anchors), encode(positives), encode(negatives))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
