"""The presets that use an mtlkit primitive, run with the REAL primitive on a tiny BERT: each
asserts that its primitive acted (against an independent reference where the value is
computable), and each resumes exactly after a SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pipeline_helpers import assert_same_weights, kill_at_step, run_tiny_clip

import mtlkit
from multitask_bert.batching import as_task_batches
from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.config import RunConfig
from multitask_bert.pipeline import _Data, build_model
from multitask_bert.precision import resolve_precision
from multitask_bert.presets import NEEDS, PRESETS
from multitask_bert.primitives import SmartTerms
from multitask_bert.train import Trainer


def _run(model: Path, data: Path, out: Path, preset: str, *extra: str) -> dict:
    return run_tiny_clip(model, data, out, "--preset", preset, "--lora-r", "4",
                         "--contrastive-unsup-steps", "4", "--contrastive-sup-steps", "4",
                         "--contrastive-batch-size", "8", "--deterministic", *extra)


def _trainer(model_dir: Path, data_dir: Path, tmp: Path, **overrides) -> Trainer:
    """A Trainer of the pipeline's own parts on the tiny model, no dropout (exact references)."""
    cfg = RunConfig(model=str(model_dir), data_dir=str(data_dir), batch_size=4, max_length=32,
                    dropout=0.0, encoder_dropout=0.0, progress=False, **overrides)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg)
    data = _Data(cfg, tokenizer)
    precision = resolve_precision("fp32", torch.device("cpu"), log=False)
    return Trainer(cfg, model, data.train, lambda m: {}, torch.device("cpu"), tmp, precision)


def test_every_primitive_preset_is_tested_here() -> None:
    assert set(NEEDS) == {p for p in PRESETS if PRESETS[p].weighting or PRESETS[p].smart_weight
                          or PRESETS[p].contrastive or PRESETS[p].mixture == "lora"}
    assert all(hasattr(mtlkit, name) for names in NEEDS.values() for name in names)


# ----------------------------------------------------------------------------- PCGrad


def test_surgery_preset_runs_the_real_pcgrad(tiny_model_dir: Path, data_dir: Path,
                                             tmp_path: Path) -> None:
    m = _run(tiny_model_dir, data_dir, tmp_path / "o", "ce-interleaved-surgery", "--epochs", "1")
    stats = m["history"][0]["primitives"]
    assert stats["combined_steps"] == m["global_steps"] == 6
    assert stats["gradient_conflicts"] > 0  # 3 pairs per step can conflict
    saved = load_checkpoint(tmp_path / "o" / "checkpoints" / "last")[1]["optimizer"]
    # AdamW's state and PCGrad's own (its visiting-order generator) are both checkpointed
    assert {"state", "param_groups"} < set(saved) and saved["state"]


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_pcgrad_wiring_equals_a_projection_by_hand(tiny_model_dir: Path, data_dir: Path,
                                                   tmp_path: Path) -> None:
    """Two tasks (the visiting order does not matter): the shared encoder's gradient is the
    sum of the projected task gradients, computed here by the textbook formula, and each
    head gets its own task's plain gradient."""
    trainer = _trainer(tiny_model_dir, data_dir, tmp_path, tasks=("qqp", "sts"),
                       weighting="pcgrad")
    model = trainer.model
    shared = model.shared_parameters()
    conflicts = 0
    for item in list(trainer.loader)[:5]:
        losses = trainer._task_losses(as_task_batches(item))
        g1, g2 = (_flat(torch.autograd.grad(losses[t], shared, retain_graph=True))
                  for t in ("qqp", "sts"))
        dot = torch.dot(g1, g2)
        want = g1 + g2
        if dot < 0:
            conflicts += 1
            want = (g1 - dot / g2.dot(g2) * g2) + (g2 - dot / g1.dot(g1) * g1)
        heads = {t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()),
                                        retain_graph=True) for t in ("qqp", "sts")}
        trainer.opt.zero_grad(set_to_none=True)
        stats = trainer.opt.backward(losses)
        assert stats.num_conflicts == int(dot < 0)
        torch.testing.assert_close(_flat(p.grad for p in shared), want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max()))
        for t, grads in heads.items():
            torch.testing.assert_close(_flat(p.grad for p in model.heads[t].parameters()),
                                       _flat(grads), rtol=1e-5, atol=1e-8)
    assert conflicts > 0, "no conflicting step: the test would not see the projection"


# ----------------------------------------------------------------------------- SMART


def test_smart_preset_adds_a_positive_term(tiny_model_dir: Path, data_dir: Path,
                                           tmp_path: Path) -> None:
    # no dropout: the clean and the perturbed forward then differ by SMART's noise alone
    m = _run(tiny_model_dir, data_dir, tmp_path / "o", "ce-interleaved-smart", "--epochs", "1",
             "--dropout", "0", "--encoder-dropout", "0")
    term = m["history"][0]["primitives"]["smart_term"]
    assert term > 0 and term < float("inf")


def _divergence(task: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if task == "sst":  # symmetric KL of the softmax laws
        p, q = a.softmax(-1), b.softmax(-1)
        return ((p - q) * (p.log() - q.log())).sum(-1).mean()
    if task == "qqp":  # symmetric KL of the Bernoulli laws of one logit
        return ((torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean()
    return F.mse_loss(a, b)


def _smart_by_hand(model, task, batch, mode, seed):
    """SMART's Algorithm 1 with one ascent step, per-token l-inf norms (the library's
    documented defaults: sigma = eps = 1e-5, eta = 1e-3)."""
    enc = model.encoder_for(task)
    kwargs = {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"]}

    def f(e):
        return model.head_output(task, model.pool(enc(inputs_embeds=e, **kwargs),
                                                  batch["attention_mask"]), batch)

    emb = enc.get_input_embeddings()(batch["input_ids"])
    clean = f(emb)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.manual_seed(seed)
    noise = (torch.randn(emb.shape) * 1e-5 * mask).requires_grad_(True)
    (g,) = torch.autograd.grad(_divergence(task, f(emb.detach() + noise), clean.detach()), noise)
    with torch.no_grad():
        if mode == "projected":
            norm = g.abs().amax(-1, keepdim=True)
            step = torch.where(norm > 0, g / norm.clamp_min(1e-30), torch.zeros_like(g))
            noise = (noise + 1e-3 * step).clamp(-1e-5, 1e-5) * mask
        else:
            raw = noise + 1e-3 * g
            noise = raw / raw.abs().amax(-1, keepdim=True).clamp_min(1e-30) * mask
    return clean, _divergence(task, f(emb + noise), clean)


@pytest.mark.parametrize("mode", ["projected", "normalized"])
@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_smart_term_equals_algorithm_1_by_hand(task: str, mode: str, tiny_model_dir: Path,
                                               data_dir: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, data_dir, tmp_path, smart_weight=2.0, smart_mode=mode)
    model = trainer.model.eval()
    batch = next(b for item in trainer.loader for t, b in as_task_batches(item).items()
                 if t == task)
    batch = {k: v for k, v in batch.items() if k not in ("index", "labels")}
    torch.manual_seed(11)
    out, term = SmartTerms(2.0, mode).output_and_term(model, task, batch)
    want_out, want_term = _smart_by_hand(model, task, batch, mode, seed=11)
    torch.testing.assert_close(out, model(task, batch))
    torch.testing.assert_close(out, want_out)
    assert want_term > 0
    torch.testing.assert_close(term, 2.0 * want_term, rtol=2e-3, atol=0)


# ----------------------------------------------------------------------------- SimCSE


def test_contrastive_stage_loss_falls(tiny_model_dir: Path, data_dir: Path,
                                      tmp_path: Path) -> None:
    """The stage's own losses fall in both stages (mean pooling: the tiny random BERT's [CLS]
    embedding is nearly the same for every sentence, which leaves SimCSE no gradient)."""
    m = _run(tiny_model_dir, data_dir, tmp_path / "o", "ce-interleaved-contrastive",
             "--contrastive-unsup-steps", "30", "--contrastive-sup-steps", "30",
             "--pooling", "mean", "--max-steps", "1")
    losses = m["extra"]["contrastive_loss"]
    assert [len(losses["unsup"]), len(losses["sup"])] == [30, 30]
    for stage in ("unsup", "sup"):
        first, last = losses[stage][:8], losses[stage][-8:]
        assert sum(last) < 0.5 * sum(first), (stage, losses[stage])


def _info_nce_by_hand(model, tokenizer, pairs) -> float:
    """Eval-mode InfoNCE of all ``pairs`` at once (cosines / 0.05, the diagonal the target)."""
    model.eval()
    with torch.no_grad():
        def embed(texts):
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            return F.normalize(model.embed("sst", batch), dim=-1)

        logits = embed([p.anchor for p in pairs]) @ embed([p.positive for p in pairs]).T / 0.05
        loss = F.cross_entropy(logits, torch.arange(len(pairs))).item()
    model.train()
    return loss


def test_contrastive_stage_trains_the_encoder_on_its_pairs(tiny_model_dir: Path,
                                                          data_dir: Path) -> None:
    from multitask_bert.contrastive import contrastive_stage, stage_pairs

    cfg = RunConfig(model=str(tiny_model_dir), data_dir=str(data_dir), max_length=32,
                    pooling="mean", contrastive_unsup_steps=20, contrastive_sup_steps=20,
                    contrastive_lr=1e-3, contrastive_batch_size=8)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg)
    data = _Data(cfg, tokenizer)
    pairs = stage_pairs(data.splits["train"])
    before = {k: _info_nce_by_hand(model, tokenizer, v) for k, v in pairs.items()}
    contrastive_stage(model, data.splits["train"], data.cache, cfg, torch.device("cpu"),
                      lambda: torch.autocast("cpu", enabled=False))
    after = {k: _info_nce_by_hand(model, tokenizer, v) for k, v in pairs.items()}
    for stage in ("unsup", "sup"):
        assert after[stage] < 0.7 * before[stage], (before, after)


def test_contrastive_pairs_come_from_mine_pairs(data_dir: Path) -> None:
    from multitask_bert.contrastive import stage_pairs
    from multitask_bert.data import read_split

    splits = {t: read_split(data_dir, t, "train") for t in ("sst", "qqp", "sts")}
    pairs = stage_pairs(splits)
    qqp, sts = splits["qqp"], splits["sts"]
    want = [(a, b) for a, b, y in zip(qqp.sent1, qqp.sent2, qqp.labels, strict=True) if y == 1]
    want += [(a, b) for a, b, y in zip(sts.sent1, sts.sent2, sts.labels, strict=True) if y >= 4]
    assert [(p.anchor, p.positive) for p in pairs["sup"]] == want and want
    every = [s for sp in splits.values() for s in sp.sent1 + (sp.sent2 or [])]
    assert [p.anchor for p in pairs["unsup"]] == every
    assert all(p.positive == p.anchor for p in pairs["unsup"])


# ----------------------------------------------------------------------------- LoRAMoE


def test_lora_experts_change_and_the_base_stays_frozen(tiny_model_dir: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    _run(tiny_model_dir, data_dir, tmp_path / "o", "ce-mixture-lora-clip", "--epochs", "1")
    cfg = RunConfig(model=str(tiny_model_dir), mixture="lora", lora_r=4)
    torch.manual_seed(0)  # the run's seed, before building its model
    start = build_model(cfg)[0].state_dict()
    end = load_checkpoint(tmp_path / "o" / "checkpoints" / "last")[0]
    assert start.keys() == end.keys()
    experts = {t: [k for k in end if "lora_" in k and f".{t}." in k] for t in ("sst", "qqp", "sts")}
    assert all(experts.values()), experts
    for task, keys in experts.items():
        assert all(not torch.equal(start[k], end[k]) for k in keys), f"{task}'s expert idle"
    base = [k for k in end if k.startswith("encoder.") and "lora_" not in k]
    assert base and all(torch.equal(start[k], end[k]) for k in base)  # frozen
    heads = [k for k in end if k.startswith("heads.")]
    assert all(not torch.equal(start[k], end[k]) for k in heads)


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(NEEDS))
def test_primitive_preset_resumes_exactly_after_sigkill(preset: str, tiny_model_dir: Path,
                                                        data_dir: Path, tmp_path: Path) -> None:
    """Killed at step 4 of 12 (a checkpoint every 3 steps), resumed: the weights of an
    uninterrupted run, bit for bit (PCGrad's generator, SMART's noise RNG, the finished
    SimCSE stage and the LoRA experts all go through the checkpoint)."""
    flags = ["--epochs", "2", "--checkpoint-every", "3", "--log-every", "1"]
    ref = _run(tiny_model_dir, data_dir, tmp_path / "ref", preset, *flags)
    argv = ["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out",
            str(tmp_path / "cut"), "--batch-size", "4", "--max-length", "32", "--no-progress",
            "--threads", "1", "--no-plots", "--lr", "1e-3", "--preset", preset, "--lora-r", "4",
            "--contrastive-unsup-steps", "4", "--contrastive-sup-steps", "4",
            "--contrastive-batch-size", "8", "--deterministic", *flags]
    kill_at_step(argv, 4, tmp_path / "cut.log")
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = _run(tiny_model_dir, data_dir, tmp_path / "cut", preset, *flags, "--resume")
    assert resumed["global_steps"] == ref["global_steps"] == 12
    assert [h["dev"] for h in resumed["history"]] == [h["dev"] for h in ref["history"]]
    # the SimCSE stage ran once, before the kill, and is not run again
    assert resumed["extra"].get("contrastive_loss") == ref["extra"].get("contrastive_loss")
    assert_same_weights(tmp_path / "ref" / "checkpoints" / "last",
                        tmp_path / "cut" / "checkpoints" / "last")
