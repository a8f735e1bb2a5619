"""``--precision auto|fp32|bf16``: bfloat16 autocast only where the device runs it natively.

bfloat16 autocast halves the matmul cost where the hardware has bf16 instructions (CUDA
devices of compute capability 8.0 and up; CPUs with AVX-512-BF16 or AMX). Elsewhere PyTorch
emulates it, and a MiniLM training step on an AVX2-only CPU runs about 20 times slower than in
float32 (``benchmarks/bench_train_step.py``). ``auto`` (the default) therefore chooses bf16
only on native hardware and says which it chose, and why, in one log line; an explicit
``bf16`` on a CPU without native support is obeyed with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


def cpu_capability() -> str:
    """What this CPU offers PyTorch: the dispatch level and the bf16 extensions.

    >>> cpu_capability().split(" ")[0] in {"DEFAULT", "AVX2", "AVX512", "NO", "VSX", "ZVECTOR",
    ...                                    "SVE256", "SVE", "NEON", "Z"}
    True
    """
    extras = [name for name, probe in (("AVX512_BF16", "_is_avx512_bf16_supported"),
                                       ("AMX", "_is_amx_tile_supported"))
              if getattr(torch.cpu, probe, lambda: False)()]
    return " ".join([torch.backends.cpu.get_cpu_capability(), *extras])


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and the evidence.

    >>> native_bf16(torch.device("meta"))
    (False, 'meta devices have no bf16 kernels worth using')
    """
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA"
        return ok, f"{name} {'supports' if ok else 'lacks'} bf16"
    if device.type == "cpu":
        cap = cpu_capability()
        ok = "AVX512_BF16" in cap or "AMX" in cap
        return ok, f"CPU capability {cap}: {'native' if ok else 'no native'} bf16"
    return False, f"{device.type} devices have no bf16 kernels worth using"


@dataclass(frozen=True)
class Precision:
    """The precision a run uses: ``"bf16"`` (autocast) or ``"fp32"``, and why.

    >>> isinstance(Precision("fp32", "as asked").autocast(), contextlib.nullcontext)
    True
    """

    name: str
    reason: str
    device_type: str = "cpu"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self) -> Any:
        """A fresh context: bf16 autocast on the device, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def resolve_precision(requested: str, device: torch.device, log: bool = True) -> Precision:
    """The :class:`Precision` for ``--precision requested`` on ``device``.

    >>> resolve_precision("fp32", torch.device("cpu"), log=False).name
    'fp32'
    >>> resolve_precision("auto", torch.device("meta"), log=False).reason
    'auto: float32, since meta devices have no bf16 kernels worth using'

    Raises:
        ValueError: ``requested`` is not auto, fp32 or bf16.
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision: expected auto, fp32 or bf16, got {requested!r}")
    native, why = native_bf16(device)
    if requested == "fp32":
        out = Precision("fp32", "float32, as asked (--precision fp32)", device.type)
    elif requested == "bf16":
        out = Precision("bf16", f"bfloat16 autocast, as asked ({why})", device.type)
        if not native:
            msg = (f"--precision bf16 on {device.type} without native bf16 ({why}): emulated "
                   "bf16 runs many times slower than float32 (about 20x for a MiniLM step on "
                   "an AVX2 CPU); --precision auto would use float32")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)
    else:
        name = "bf16" if native else "fp32"
        text = "bfloat16 autocast" if native else "float32"
        out = Precision(name, f"auto: {text}, since {why}", device.type)
    if log:
        logger.info("precision: %s", out.reason)
    return out
