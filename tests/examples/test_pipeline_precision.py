"""``--precision auto|fp32|bf16``: bf16 only where the device runs it natively, one log line
saying which and why, a warning for emulated bf16, and bf16 outputs checked by value."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from multitask_bert import precision as prec
from multitask_bert.precision import Precision, cpu_capability, native_bf16, resolve_precision


def _cpu(monkeypatch: pytest.MonkeyPatch, capability: str, avx512_bf16: bool,
         amx: bool) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(("capability", "avx512_bf16", "amx", "native"), [
    ("AVX2", False, False, False), ("AVX512", False, False, False),
    ("AVX512", True, False, True), ("AVX512", True, True, True), ("DEFAULT", False, False, False)])
def test_auto_uses_bf16_exactly_where_the_cpu_has_it(capability: str, avx512_bf16: bool,
                                                     amx: bool, native: bool,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _cpu(monkeypatch, capability, avx512_bf16, amx)
    assert native_bf16(torch.device("cpu"))[0] is native
    with caplog.at_level(logging.INFO, logger=prec.__name__), warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        p = resolve_precision("auto", torch.device("cpu"))
    assert p.name == ("bf16" if native else "fp32") and p.bf16 is native
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"precision: {p.reason}"]
    assert f"CPU capability {capability}" in p.reason
    assert ("native bf16" in p.reason) and (("no native" in p.reason) is not native)


def test_explicit_bf16_without_native_support_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, "AVX2", False, False)
    with pytest.warns(RuntimeWarning, match="many times slower than float32"):
        p = resolve_precision("bf16", torch.device("cpu"), log=False)
    assert p.name == "bf16"
    _cpu(monkeypatch, "AVX512", True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", torch.device("cpu"), log=False).bf16
    assert resolve_precision("fp32", torch.device("cpu"), log=False).name == "fp32"
    with pytest.raises(ValueError, match="--precision: expected auto, fp32 or bf16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_cuda_without_a_device_is_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = resolve_precision("auto", torch.device("cuda"), log=False)
    assert p.name == "fp32" and "no CUDA lacks bf16" in p.reason


def test_cpu_capability_names_this_machine() -> None:
    assert cpu_capability().split()[0] == torch.backends.cpu.get_cpu_capability()


def test_bf16_outputs_are_the_float32_ones_to_bf16_precision(tiny_model_dir: Path,
                                                            data_dir: Path) -> None:
    """Under bf16 autocast the model's outputs move by bf16 rounding (8 bits of mantissa: a
    relative error of order 1e-2 after a few layers), not more, and they do move (the
    autocast is really applied)."""
    from multitask_bert.data import TokenCache, read_split
    from multitask_bert.evaluate import model_outputs
    from multitask_bert.model import MultiTaskBert, load_backbone

    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    torch.manual_seed(0)
    model = MultiTaskBert(encoder, 32, dropout=0.0).eval()
    cache = TokenCache(tokenizer, 32)
    fp32, bf16 = Precision("fp32", "test"), Precision("bf16", "test")
    for task in ("sst", "qqp", "sts"):
        ds = cache.get(read_split(data_dir, task, "dev"), "cross")
        a = model_outputs(model, ds, 4, torch.device("cpu"), fp32)
        b = model_outputs(model, ds, 4, torch.device("cpu"), bf16)
        assert a.dtype == b.dtype == torch.float32
        scale = a.abs().max()
        assert 0 < float((a - b).abs().max()) <= 0.05 * float(scale), task
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the same numbers, computed here
            batch = ds.collate([ds[i] for i in range(len(ds))])
            batch = {k: v for k, v in batch.items() if k not in ("index", "labels")}
            direct = model(task, batch).float()
        torch.testing.assert_close(b, direct, rtol=0.05, atol=0.05 * float(scale))
