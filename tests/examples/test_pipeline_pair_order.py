"""Both orders of a pair: tokenization, averaged predictions (``--symmetric-eval``), and the
flags end to end (the random order of training pairs is tested in test_pipeline_batching.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import run_tiny_clip

import bert_sst_qqp_sts as cli
from multitask_bert.data import TokenCache, TokenizedTask, read_split
from multitask_bert.evaluate import predict_split
from multitask_bert.model import MultiTaskBert, predict


@pytest.fixture
def tok(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_both_orders_are_the_swapped_pairs(data_dir: Path, tok) -> None:
    qqp = read_split(data_dir, "qqp", "train")
    ds = TokenizedTask(qqp, tok, "cross", 64, both_orders=True)
    n = len(ds)
    assert ds.has_both_orders
    for i in range(n):
        want = tok(qqp.sent2[i], qqp.sent1[i])
        item = ds[i + n]
        assert item["input_ids"] == want["input_ids"]
        assert item["token_type_ids"] == want["token_type_ids"]
        assert item["index"] == i and item["label"] == qqp.labels[i]
        assert ds[i]["input_ids"] == tok(qqp.sent1[i], qqp.sent2[i])["input_ids"]
    assert not TokenizedTask(qqp, tok, "cross", 64).has_both_orders


def test_cache_asks_for_both_orders_only_where_they_exist(data_dir: Path, tok) -> None:
    cache = TokenCache(tok, 64)
    sst = read_split(data_dir, "sst", "train")
    sts = read_split(data_dir, "sts", "train")
    assert not cache.get(sst, "cross", both_orders=True).has_both_orders
    assert not cache.get(sts, "separate", both_orders=True).has_both_orders
    both = cache.get(sts, "cross", both_orders=True)
    assert both.has_both_orders and cache.get(sts, "cross", True) is both
    assert not cache.get(sts, "cross").has_both_orders  # a separate entry


def _tiny_model(tiny_model_dir: Path) -> MultiTaskBert:
    from transformers import AutoModel

    torch.manual_seed(0)
    enc = AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False)
    model = MultiTaskBert(enc, enc.config.hidden_size, encoding="cross", dropout=0.0).eval()
    with torch.no_grad():  # STS scores inside [0, 5], so no clamping hides a difference
        model.heads["sts"].bias.fill_(2.5)
    return model


@pytest.mark.parametrize("task", ["qqp", "sts"])
def test_symmetric_prediction_averages_both_orders(task: str, data_dir: Path, tok,
                                                   tiny_model_dir: Path) -> None:
    model = _tiny_model(tiny_model_dir)
    ds = TokenizedTask(read_split(data_dir, task, "dev"), tok, "cross", 64, both_orders=True)
    n = len(ds)
    got = predict_split(model, ds, 3, torch.device("cpu"), symmetric=True)
    one_order = predict_split(model, ds, 3, torch.device("cpu"))
    with torch.no_grad():  # the naive reference: each row alone, both orders, mean output
        both = [predict(task, (model(task, ds.collate([ds[i]]))
                               + model(task, ds.collate([ds[i + n]]))) / 2) for i in range(n)]
        single = [predict(task, model(task, ds.collate([ds[i]]))) for i in range(n)]
    for preds, ref in ((got, both), (one_order, single)):
        assert preds.pred == pytest.approx([p.item() for p, _ in ref], abs=1e-5)
        assert preds.confidence == pytest.approx([c.item() for _, c in ref], abs=1e-5)
    # the random model is not symmetric, so averaging changed something
    value = (lambda p: p.pred) if task == "sts" else (lambda p: p.confidence)
    assert value(got) != pytest.approx(value(one_order), abs=1e-5)


_run = run_tiny_clip


def test_pair_flags_end_to_end(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    plain = _run(tiny_model_dir, data_dir, tmp_path / "plain", "--epochs", "1")
    both = _run(tiny_model_dir, data_dir, tmp_path / "both", "--epochs", "1", "--pair-swap",
                "--symmetric-eval")
    assert both["global_steps"] == plain["global_steps"]  # same steps, other orders
    assert both["best_dev"]["qqp"] != pytest.approx(plain["best_dev"]["qqp"]) or \
        both["best_dev"]["sts"] != pytest.approx(plain["best_dev"]["sts"])
    for split in ("dev", "test"):
        lines = (tmp_path / "both" / "predictions" / f"sts-{split}.csv").read_text().splitlines()
        assert lines[0] == "id,prediction"
        assert len(lines) - 1 == len(read_split(data_dir, "sts", split))


@pytest.mark.parametrize("flag", ["--pair-swap", "--symmetric-eval"])
def test_pair_flags_need_cross_encoding(flag: str, data_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--data-dir", str(data_dir), "--preset", "baseline", flag])
    assert f"{flag}: needs --encoding cross" in capsys.readouterr().err
