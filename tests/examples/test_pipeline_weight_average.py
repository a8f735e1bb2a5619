"""The weight average (``--ema``): the update against its formula, applying and restoring,
checkpointing, and the flag end to end (selection, saved weights, exact resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import run_tiny_clip
from torch import nn

from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.weight_average import WeightEMA


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0.0, 0.999), steps=st.integers(1, 30), seed=st.integers(0, 100))
def test_update_follows_the_formula(decay: float, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(3, 2)
    ema = WeightEMA(lin, decay)
    ref = {n: p.detach().double().clone() for n, p in lin.named_parameters()}
    for t in range(steps):
        with torch.no_grad():
            for p in lin.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        ema.update()
        d = min(decay, (1 + t) / (10 + t))
        for n, p in lin.named_parameters():
            ref[n] = d * ref[n] + (1 - d) * p.detach().double()
    assert ema.updates == steps
    for n in ref:
        torch.testing.assert_close(ema.shadow[n].double(), ref[n], rtol=1e-5, atol=1e-6)


def test_only_trainable_parameters_and_float32_shadows() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).to(torch.bfloat16)
    model[0].weight.requires_grad_(False)
    ema = WeightEMA(model, 0.9)
    assert set(ema.shadow) == {"0.bias", "1.weight", "1.bias"}
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)
    with pytest.raises(ValueError, match="no trainable"):
        WeightEMA(nn.Linear(1, 1).requires_grad_(False), 0.9)


def test_applied_swaps_in_and_restores_even_on_error() -> None:
    lin = nn.Linear(2, 1)
    ema = WeightEMA(lin, 0.9)
    live = lin.weight.detach().clone()
    with torch.no_grad():
        ema.shadow["weight"].fill_(7.0)
    with ema.applied(lin):
        assert torch.all(lin.weight == 7.0)
    assert torch.equal(lin.weight, live)
    with pytest.raises(RuntimeError), ema.applied(lin):
        raise RuntimeError("evaluation failed")
    assert torch.equal(lin.weight, live)
    with pytest.raises(ValueError, match="other than"), ema.applied(nn.Linear(5, 5, bias=False)):
        pass


def test_state_dict_round_trip_and_mismatch() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    ema_a = WeightEMA(a, 0.5)
    ema_a.update()
    ema_b = WeightEMA(b, 0.5)
    ema_b.load_state_dict(ema_a.state_dict())
    assert ema_b.updates == 1
    for n in ema_a.shadow:
        assert torch.equal(ema_a.shadow[n], ema_b.shadow[n])
    with pytest.raises(ValueError, match="do not match"):
        WeightEMA(nn.Linear(2, 2, bias=False), 0.5).load_state_dict(ema_a.state_dict())


_run = run_tiny_clip


def test_ema_selects_and_saves_the_averaged_weights(tiny_model_dir: Path, data_dir: Path,
                                                     tmp_path: Path) -> None:
    m = _run(tiny_model_dir, data_dir, tmp_path / "ema", "--epochs", "1", "--ema", "0.9")
    (entry,) = m["history"]
    assert set(entry["dev_without_ema"]) == set(entry["dev"])
    assert entry["dev"] == m["best_dev"]
    ckpt = tmp_path / "ema" / "checkpoints"
    best, _ = load_checkpoint(ckpt / "best")
    live, state = load_checkpoint(ckpt / "last")
    shadow = state["ema"]["shadow"]
    assert state["ema"]["updates"] == m["global_steps"]
    differs = 0
    for name, t in shadow.items():  # best = the average; last = the live weights
        torch.testing.assert_close(best[name].float(), t, rtol=0, atol=0)
        differs += not torch.equal(live[name], best[name])
    assert differs > 0
    # the predictions were made with the saved (averaged) weights
    assert m["final_dev_with_best_checkpoint"] == pytest.approx(m["best_dev"], abs=1e-6)


def test_ema_resume_equals_uninterrupted(tiny_model_dir: Path, data_dir: Path,
                                         tmp_path: Path) -> None:
    flags = ["--epochs", "2", "--ema", "0.8", "--pair-swap", "--symmetric-eval"]
    full = _run(tiny_model_dir, data_dir, tmp_path / "full", *flags)
    _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "4")
    resumed = _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--resume")
    assert resumed["global_steps"] == full["global_steps"] == 12
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")[1]["ema"]["shadow"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")[1]["ema"]["shadow"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # (the cut run also evaluated its partial epoch, so compare the last evaluations)
    for key in ("dev", "dev_without_ema"):
        assert resumed["history"][-1][key] == pytest.approx(full["history"][-1][key], abs=1e-6)


def test_resume_with_ema_from_a_run_without_it_is_an_error(tiny_model_dir: Path,
                                                           data_dir: Path,
                                                           tmp_path: Path) -> None:
    _run(tiny_model_dir, data_dir, tmp_path / "r", "--epochs", "2", "--max-steps", "2")
    with pytest.raises(ValueError, match="holds no weight average"):
        _run(tiny_model_dir, data_dir, tmp_path / "r", "--epochs", "2", "--ema", "0.9",
             "--resume")
