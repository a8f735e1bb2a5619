"""Layer-wise learning-rate decay (``--layer-lr-decay``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

import bert_sst_qqp_sts as cli
from multitask_bert.config import RunConfig
from multitask_bert.layer_decay import layerwise_param_groups
from multitask_bert.model import MultiTaskBert
from multitask_bert.precision import Precision
from multitask_bert.train import Trainer


def _model(layers: int) -> MultiTaskBert:
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=8)
    return MultiTaskBert(BertModel(cfg, add_pooling_layer=False), 8)


@settings(max_examples=20, deadline=None)
@given(layers=st.integers(1, 4), decay=st.floats(0.05, 1.0), lr=st.floats(1e-6, 1e-2))
def test_groups_match_the_formula_and_cover_every_parameter(layers: int, decay: float,
                                                            lr: float) -> None:
    model = _model(layers)
    groups = layerwise_param_groups(model, lr, decay)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)  # each parameter in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(names)
    for name, p in names.items():  # the naive reference, name by name
        if "embeddings." in name:
            want = lr * decay ** (layers + 1)
        elif ".layer." in name:
            k = int(name.split(".layer.")[1].split(".")[0])
            want = lr * decay ** (layers - k)
        else:
            want = lr
        assert lr_of[id(p)] == pytest.approx(want, rel=1e-12), name


def test_frozen_parameters_are_left_out_and_errors() -> None:
    model = _model(2)
    model.encoder.embeddings.requires_grad_(False)
    groups = layerwise_param_groups(model, 1e-3, 0.9)
    assert [g["depth"] for g in groups] == [1, 2, 3]
    with pytest.raises(ValueError, match="decay"):
        layerwise_param_groups(model, 1e-3, 0.0)
    with pytest.raises(ValueError, match="encoder layer"):
        layerwise_param_groups(torch.nn.Linear(2, 2), 1e-3, 0.9)


def test_trainer_uses_the_groups_and_the_schedule_scales_each(data_dir: Path,
                                                               tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from multitask_bert.data import TokenizedTask, read_split

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _model(2)
    sets = {"sst": TokenizedTask(read_split(data_dir, "sst", "train"), tok, "cross", 32)}
    cfg = RunConfig(tasks=("sst",), epochs=1, batch_size=4, lr=1e-3, layer_lr_decay=0.5,
                    lr_schedule="linear", progress=False)
    trainer = Trainer(cfg, model, sets, lambda m: {}, torch.device("cpu"), Path("unused"),
                      Precision("fp32", "test"))
    lrs = [g["lr"] for g in trainer.base_opt.param_groups]
    assert lrs == pytest.approx([1e-3 / 8, 1e-3 / 4, 1e-3 / 2, 1e-3])
    trainer.base_opt.step()  # no gradients yet: moves nothing
    trainer.sched.step()  # the linear decay multiplies every group's own rate
    frac = trainer.base_opt.param_groups[-1]["lr"] / 1e-3
    assert frac == pytest.approx(1 - 1 / 6)  # 24 rows in batches of 4: 6 steps in all
    assert [g["lr"] for g in trainer.base_opt.param_groups] == pytest.approx(
        [x * frac for x in lrs])


def test_flag_end_to_end_and_validation(tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    m = cli.main(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out",
                  str(tmp_path / "o"), "--batch-size", "4", "--max-length", "32",
                  "--no-progress", "--log-every", "0", "--threads", "1", "--no-plots",
                  "--preset", "ce-interleaved-surgery", "--epochs", "1",
                  "--layer-lr-decay", "0.8"])
    assert m["global_steps"] == 6 and 0.0 <= m["best_dev"]["sst"] <= 1.0
    with pytest.raises(SystemExit):
        cli.parse_args(["--data-dir", str(data_dir), "--layer-lr-decay", "1.5"])
    assert "--layer-lr-decay: expected a factor in (0, 1], got 1.5" in capsys.readouterr().err
