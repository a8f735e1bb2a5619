"""The weight average (``--ema``, torch's AveragedModel with a warm-up EMA): the update against
its formula, checkpointing, and the flag end to end (selection, saved weights, exact resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import run_tiny_clip
from torch import nn

from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.weight_average import weight_average


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0.0, 0.999), steps=st.integers(1, 30), seed=st.integers(0, 100))
def test_update_follows_the_formula(decay: float, steps: int, seed: int) -> None:
    """A float64 loop: the first update copies, update t >= 1 moves by 1 - d_t with
    d_t = min(decay, (1 + t) / (10 + t))."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(3, 2)
    avg = weight_average(lin, decay)
    ref: dict[str, torch.Tensor] = {}
    for t in range(steps):
        with torch.no_grad():
            for p in lin.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        avg.update_parameters(lin)
        d = 0.0 if t == 0 else min(decay, (1 + t) / (10 + t))
        for n, p in lin.named_parameters():
            ref[n] = p.detach().double() if t == 0 else d * ref[n] + (1 - d) * p.detach().double()
    assert int(avg.n_averaged) == steps
    for n, p in avg.module.named_parameters():
        torch.testing.assert_close(p.detach().double(), ref[n], rtol=1e-5, atol=1e-6)


def test_decay_is_checked() -> None:
    with pytest.raises(ValueError, match="--ema: expected a decay in"):
        weight_average(nn.Linear(1, 1), 1.0)


def test_the_average_is_a_separate_model_and_round_trips() -> None:
    lin = nn.Linear(2, 2)
    avg = weight_average(lin, 0.5)
    avg.update_parameters(lin)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    avg.update_parameters(lin)
    assert not torch.equal(avg.module.weight, lin.weight)  # the live weights are untouched
    other = weight_average(nn.Linear(2, 2), 0.5)
    other.load_state_dict(avg.state_dict())
    assert int(other.n_averaged) == 2
    assert torch.equal(other.module.weight, avg.module.weight)
    with pytest.raises(RuntimeError):
        weight_average(nn.Linear(2, 2, bias=False), 0.5).load_state_dict(avg.state_dict())


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
    assert int(state["ema"]["n_averaged"]) == m["global_steps"]
    differs = 0
    for name in best:  # best = the average; last = the live weights
        torch.testing.assert_close(best[name], state["ema"][f"module.{name}"], rtol=0, atol=0)
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
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")[1]["ema"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")[1]["ema"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # (the cut run also evaluated its partial epoch, so compare the last evaluations)
    for key in ("dev", "dev_without_ema"):
        assert resumed["history"][-1][key] == full["history"][-1][key]


def test_resume_with_ema_from_a_run_without_it_is_an_error(tiny_model_dir: Path,
                                                           data_dir: Path,
                                                           tmp_path: Path) -> None:
    _run(tiny_model_dir, data_dir, tmp_path / "r", "--epochs", "2", "--max-steps", "2")
    with pytest.raises(ValueError, match=r"--ema: .* holds no weight average"):
        _run(tiny_model_dir, data_dir, tmp_path / "r", "--epochs", "2", "--ema", "0.9",
             "--resume")
