"""``--pair-feature cosine``: the frozen encoder's pair cosines, the one-feature fits that start
the pair heads, the heads themselves, and the pipeline with the flag (fresh and resumed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import run_tiny_clip
from scipy.optimize import minimize

from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.data import TaskSplit, TokenizedTask, read_split
from multitask_bert.model import FeatureHead, MultiTaskBert, load_backbone
from multitask_bert.pair_features import (
    CosineFeatures,
    fit_feature,
    fit_feature_heads,
    pair_cosines,
    sentence_embeddings,
)


def _naive_embedding(encoder: torch.nn.Module, tokenizer, sentence: str) -> torch.Tensor:
    """One sentence alone, no padding: the mean of its token states, unit length."""
    enc = tokenizer(sentence, return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state[0]
    return F.normalize(hidden.mean(0), dim=0)


def test_embeddings_equal_one_sentence_at_a_time(tiny_model_dir: Path, data_dir: Path) -> None:
    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    split = read_split(data_dir, "sts", "train")
    sentences = split.sent1 + split.sent2 + split.sent1[:3]  # repeats map to the same row
    encoder.train()  # embedding runs in eval mode (no dropout) and restores the mode
    got = sentence_embeddings(encoder, tokenizer, sentences, batch_size=5)
    assert encoder.training
    encoder.eval()
    want = torch.stack([_naive_embedding(encoder, tokenizer, s) for s in sentences])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pair_cosines_are_symmetric_and_match_the_naive_cosine(tiny_model_dir: Path,
                                                              data_dir: Path) -> None:
    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    split = read_split(data_dir, "qqp", "dev")
    got = pair_cosines(encoder, tokenizer, split, batch_size=4)
    want = torch.stack([_naive_embedding(encoder, tokenizer, a) @
                        _naive_embedding(encoder, tokenizer, b)
                        for a, b in zip(split.sent1, split.sent2, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    swapped = TaskSplit("qqp", "dev", split.path, split.ids, split.sent2, split.sent1,
                        split.labels)
    torch.testing.assert_close(pair_cosines(encoder, tokenizer, swapped, batch_size=3), got,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs sentence pairs"):
        pair_cosines(encoder, tokenizer, read_split(data_dir, "sst", "dev"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 1), st.floats(0, 5)), min_size=3, max_size=40))
def test_sts_fit_is_least_squares(rows: list[tuple[float, float]]) -> None:
    x, y = np.array(rows).T
    if np.ptp(x) < 1e-3:  # a constant feature has no unique slope
        return
    slope, intercept = fit_feature("sts", torch.tensor(x), torch.tensor(y))
    want_slope, want_intercept = np.polyfit(x, y, 1)
    assert slope == pytest.approx(want_slope, abs=1e-6)
    assert intercept == pytest.approx(want_intercept, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qqp_fit_maximises_the_likelihood(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 1.0, 500)
    y = (rng.uniform(size=500) < 1 / (1 + np.exp(-(8 * x - 5)))).astype(float)

    def nll(c: np.ndarray) -> float:  # the same objective: likelihood plus the tiny ridge
        z = c[0] * x + c[1]
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5e-6 * len(x) * (c @ c))

    want = minimize(nll, np.zeros(2), method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    got = fit_feature("qqp", torch.tensor(x), torch.tensor(y))
    assert got == pytest.approx(tuple(want), abs=1e-4)
    assert nll(np.array(got)) <= nll(want) + 1e-9


def test_qqp_fit_stays_finite_on_separable_data() -> None:
    w, b = fit_feature("qqp", torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1.0]))
    assert np.isfinite([w, b]).all() and w > 0


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="task must be"):
        fit_feature("sst", torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="2 features and 3 labels"):
        fit_feature("sts", torch.zeros(2), torch.zeros(3))


def test_feature_term_is_float32_under_bf16_autocast() -> None:
    head = FeatureHead(4)
    head.set_feature_fit(3.0, 0.5)
    with torch.no_grad():
        head.linear.weight.zero_()
    f = torch.tensor([0.123456789, 0.987654321])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(2, 4), f)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, 0.5 + 3.0 * f, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="for a batch of 2 rows"):
        head(torch.randn(2, 4), torch.zeros(3))


def test_model_demands_the_feature_and_uses_it(tiny_model_dir: Path, data_dir: Path) -> None:
    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    model = MultiTaskBert(encoder, 32, pair_feature=True, dropout=0.0).eval()
    ds = TokenizedTask(read_split(data_dir, "sts", "dev"), tokenizer, "cross", 32,
                       both_orders=True)
    batch = ds.collate([ds[i] for i in range(4)])
    with pytest.raises(ValueError, match="has no 'pair_feature'"):
        model("sts", batch)
    ds.set_features([0.1 * i for i in range(len(ds))])
    n = len(ds)
    items = [ds[1], ds[1 + n]]  # row 1 and row 1 swapped carry the same value
    assert items[0]["pair_feature"] == items[1]["pair_feature"] == pytest.approx(0.1)
    batch = ds.collate(items)
    assert batch["pair_feature"].dtype == torch.float32
    with torch.no_grad():
        model.heads["sts"].feature_weight.fill_(2.0)
        base = model("sts", batch)
        batch["pair_feature"] = batch["pair_feature"] + 1.0
        torch.testing.assert_close(model("sts", batch) - base, torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="3 feature values for"):
        ds.set_features([0.0] * 3)
    sst = TokenizedTask(read_split(data_dir, "sst", "dev"), tokenizer, "cross", 32)
    assert model("sst", sst.collate([sst[0]])).shape == (1, 5)  # SST takes no feature


def test_heads_start_from_the_fit_of_the_frozen_cosines(tiny_model_dir: Path,
                                                        data_dir: Path) -> None:
    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    model = MultiTaskBert(encoder, 32, pair_feature=True)
    features = CosineFeatures(str(tiny_model_dir), torch.device("cpu"))
    sets = {t: TokenizedTask(read_split(data_dir, t, "train"), tokenizer, "cross", 32)
            for t in ("sst", "qqp", "sts")}
    for t in ("qqp", "sts"):
        features.attach(sets[t])
    features.close()
    with pytest.raises(RuntimeError, match="after close"):
        features.attach(sets["qqp"])
    fits = fit_feature_heads(model, sets)
    assert set(fits) == {"qqp", "sts"}  # SST has no pair feature
    for t, (w, b) in fits.items():
        want = pair_cosines(encoder, tokenizer, sets[t].split)
        assert sets[t].features == pytest.approx(want.tolist(), abs=1e-6)
        assert (w, b) == pytest.approx(fit_feature(t, want, torch.tensor(sets[t].split.labels)))
        assert model.heads[t].feature_weight.item() == pytest.approx(w, rel=1e-6)
        assert model.heads[t].linear.bias.item() == pytest.approx(b, rel=1e-6)
    with pytest.raises(ValueError, match="without pair_feature"):
        fit_feature_heads(MultiTaskBert(encoder, 32), sets)


def _rows(path: Path) -> int:
    with path.open() as f:
        return sum(1 for _ in csv.DictReader(f))


@pytest.mark.parametrize("mixture", ["none", "full"])
def test_pipeline_with_the_pair_feature(tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
                                        mixture: str) -> None:
    m = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "run", "--pair-feature", "cosine",
                      "--mixture", mixture, "--pair-swap", "--symmetric-eval", "--epochs", "1")
    seconds = m["extra"]["pair_feature_seconds"]
    assert 0 < seconds <= m["train_seconds"]
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert {"heads.qqp.feature_weight", "heads.sts.feature_weight"} <= set(state)
    for t, split in (("qqp", "dev"), ("sts", "dev"), ("sts", "test"), ("sst", "test")):
        path = tmp_path / "run" / "predictions" / f"{t}-{split}.csv"
        assert _rows(path) == len(read_split(data_dir, t, split))


def test_pair_feature_resume_equals_uninterrupted(tiny_model_dir: Path, data_dir: Path,
                                                  tmp_path: Path) -> None:
    # float32 on every CPU: in bf16 (what `auto` picks on a CPU with native bf16) the cut run's
    # evaluation at the cut can outscore epoch 1 by 1e-8, and the best checkpoints then differ
    flags = ["--pair-feature", "cosine", "--epochs", "2", "--ema", "0.9", "--precision", "fp32"]
    full = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "full", *flags)
    cut = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "5")
    resumed = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--resume")
    # the training sets' cosines were counted once, by the first part
    assert resumed["extra"]["pair_feature_seconds"] == cut["extra"]["pair_feature_seconds"]
    assert resumed["best_dev"] == pytest.approx(full["best_dev"], abs=1e-6)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "best")[0]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "best")[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_pair_feature_needs_a_pair_task(tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "x", "--pair-feature", "cosine",
                      "--tasks", "sst")
    assert "--pair-feature: needs a pair task in --tasks" in capsys.readouterr().err


def test_pair_feature_leaves_the_sst_expert_unchanged(tiny_model_dir: Path, data_dir: Path,
                                                      tmp_path: Path) -> None:
    # no clipping: a global gradient-norm clip would couple the experts' steps
    flags = ["--mixture", "full", "--epochs", "1", "--clip-norm", "0"]
    run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "plain", *flags)
    run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "feat", *flags, "--pair-feature", "cosine")
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last")[0]
    feat = load_checkpoint(tmp_path / "feat" / "checkpoints" / "last")[0]
    sst = [k for k in plain if k.startswith(("task_encoders.sst.", "heads.sst."))]
    assert sst
    for k in sst:  # nothing of the feature reaches the SST expert
        torch.testing.assert_close(feat[k], plain[k], rtol=0, atol=0)
    qqp = "task_encoders.qqp.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(feat[qqp], plain[qqp])  # while the QQP expert learned otherwise
