"""``--weighting NAME`` for every name of ``mtlkit.weighting.NAMES`` on a tiny BERT: the
weighting is called on every step and the shared encoder's gradient is the combination it
chose, ``sum_i w_i g_i`` with ``g_i`` each task's own gradient (computed here by autograd);
a loss weighting's parameters are trained; a stateful weighting resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import assert_same_weights, run_tiny_clip

import mtlkit
from multitask_bert.batching import as_task_batches
from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.config import RunConfig
from multitask_bert.pipeline import _Data, build_model
from multitask_bert.precision import resolve_precision
from multitask_bert.train import Trainer

TASKS = ("sst", "qqp", "sts")


def _trainer(model_dir: Path, data_dir: Path, tmp: Path, weighting: str) -> Trainer:
    """The pipeline's Trainer on the tiny model, no dropout (the forward is repeatable)."""
    cfg = RunConfig(model=str(model_dir), data_dir=str(data_dir), batch_size=4, max_length=32,
                    dropout=0.0, encoder_dropout=0.0, progress=False, weighting=weighting,
                    lr=1e-3)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg)
    data = _Data(cfg, tokenizer)
    precision = resolve_precision("fp32", torch.device("cpu"), log=False)
    return Trainer(cfg, model, data.train, lambda m: {}, torch.device("cpu"), tmp, precision)


def _spy(weighting) -> list[torch.Tensor]:
    """Record every call of ``weighting`` as the optimizer makes it (weights() of a Gramian
    weighting, the forward of a loss weighting)."""
    calls: list[torch.Tensor] = []
    if isinstance(weighting, torch.nn.Module):
        weighting.register_forward_hook(lambda m, args, out: calls.append(args[0].detach()))
    else:
        inner = weighting.weights

        def weights(gramian: torch.Tensor) -> torch.Tensor:
            calls.append(gramian.detach().clone())
            return inner(gramian)

        weighting.weights = weights
    return calls


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_every_weighting_is_offered() -> None:
    import bert_sst_qqp_sts as cli

    help_text = " ".join(RunConfig.__dataclass_fields__["weighting"].metadata["help"].split())
    for name in mtlkit.weighting.NAMES:
        assert name in help_text, name
        assert cli.parse_args(["--data-dir", "x", "--weighting", name]).weighting == name
    with pytest.raises(ValueError, match="--weighting: expected one of pcgrad, upgrad"):
        RunConfig(weighting="pc_grad")
    with pytest.raises(ValueError, match="--weighting: needs --schedule interleaved"):
        RunConfig(weighting="famo", schedule="sequential")


@pytest.mark.parametrize("name", mtlkit.weighting.NAMES)
def test_the_encoder_gradient_is_the_weightings_combination(name: str, tiny_model_dir: Path,
                                                           data_dir: Path,
                                                           tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, data_dir, tmp_path, name)
    weighting = trainer.opt.weighting
    assert type(weighting) is type(mtlkit.weighting.by_name(name))
    loss_based = not weighting.requires_gramian
    calls = _spy(weighting)
    shared, heads = trainer.model.shared_parameters(), trainer.model.heads
    items = iter(trainer.loader)
    for step in range(2):
        batches = as_task_batches(next(items))
        losses = trainer._task_losses(batches)  # the same numbers trainer.step computes
        own = {t: torch.autograd.grad(losses[t], shared + list(heads[t].parameters()),
                                      retain_graph=True) for t in TASKS}
        trainer.step(batches)
        stats = trainer.opt.last_stats
        assert len(calls) == step + 1, "the weighting was not called once per step"
        assert stats.tasks == TASKS and torch.isfinite(stats.weights).all()
        w = stats.weights.double()
        want = sum(w[i] * _flat(own[t][: len(shared)]).double() for i, t in enumerate(TASKS))
        torch.testing.assert_close(_flat(p.grad for p in shared).double(), want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max()))
        for i, t in enumerate(TASKS):  # heads: their own task's gradient (scaled by a loss
            head = _flat(own[t][len(shared):])  # weighting's derivative)
            torch.testing.assert_close(_flat(p.grad for p in heads[t].parameters()),
                                       head * float(w[i]) if loss_based else head,
                                       rtol=1e-4, atol=1e-7)
    counted = trainer.state.primitive_stats
    assert counted["combined_steps"] == 2
    assert ("gradient_conflicts" in counted) is not loss_based
    assert {f"weight_{t}" for t in TASKS} <= set(counted)


def test_uncertainty_log_variances_are_trained(tiny_model_dir: Path, data_dir: Path,
                                               tmp_path: Path) -> None:
    m = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "o", "--weighting", "uncertainty",
                      "--max-steps", "2")
    assert m["history"][-1]["primitives"]["combined_steps"] == 2
    state = load_checkpoint(tmp_path / "o" / "checkpoints" / "last")[1]["optimizer"]
    log_vars = state["multitask"]["weighting_state"]["log_vars"]
    assert log_vars.shape == (3,) and bool((log_vars != 0).all())  # AdamW moved every one


def test_a_stateful_weighting_resumes_exactly(tiny_model_dir: Path, data_dir: Path,
                                              tmp_path: Path) -> None:
    """FAMO's logits, Adam moments and pending losses go through the checkpoint: 2 steps,
    then --resume to 4, gives the weights of 4 uninterrupted steps."""
    flags = ["--weighting", "famo", "--epochs", "1", "--deterministic"]
    run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "ref", *flags, "--max-steps", "4")
    run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "2")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")[1]["optimizer"]
    famo = cut["multitask"]["weighting_state"]
    assert bool(famo["pending"]) and bool((famo["logits"] != 0).all())  # state worth carrying
    resumed = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps",
                            "4", "--resume")
    assert resumed["global_steps"] == 4
    assert_same_weights(tmp_path / "ref" / "checkpoints" / "last",
                        tmp_path / "cut" / "checkpoints" / "last")
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last")[1]["optimizer"]
    after = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")[1]["optimizer"]
    for key, value in ref["multitask"]["weighting_state"].items():
        assert torch.equal(value, after["multitask"]["weighting_state"][key]), key


def test_compare_driver_sweeps_weightings(tiny_model_dir: Path, data_dir: Path,
                                          tmp_path: Path) -> None:
    """Two weightings beside the preset's plain sum, one step each: the table names the
    weighting of each row, each combined its step, and ``sum`` through MultiTaskOptimizer
    trains the plain sum's weights."""
    import json

    import compare_presets

    common = ["--out", str(tmp_path / "cmp"), "--model", str(tiny_model_dir), "--data-dir",
              str(data_dir), "--epochs", "1", "--max-steps", "1", "--batch-size", "4",
              "--max-length", "32", "--no-progress", "--log-every", "0", "--no-plots",
              "--threads", "1"]
    table = compare_presets.main(["--presets", "ce-interleaved-clip", "--sweep",
                                  "weighting=sum,upgrad", *common])
    rows = [r.split(" | ")[:2] for r in table.splitlines()[2:]]
    assert rows == [["| ce-interleaved-clip", "plain sum"],
                    ["| ce-interleaved-clip weighting=sum", "sum"],
                    ["| ce-interleaved-clip weighting=upgrad", "upgrad"]]
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [r["weighting"] for r in results.values()] == [None, "sum", "upgrad"]
    assert [r["primitives"].get("combined_steps") for r in results.values()] == [None, 1, 1]
    assert_same_weights(tmp_path / "cmp" / "00-ce-interleaved-clip" / "checkpoints" / "last",
                        tmp_path / "cmp" / "01-ce-interleaved-clip_weighting-sum" / "checkpoints"
                        / "last", atol=1e-5)
    assert compare_presets.weighting_names(["all"]) == list(mtlkit.weighting.NAMES)
    with pytest.raises(SystemExit):  # a misspelt weighting stops the sweep before any run
        compare_presets.main(["--presets", "ce-interleaved-clip", "--weightings", "sum",
                              "pc_grad", *common, "--out", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()
