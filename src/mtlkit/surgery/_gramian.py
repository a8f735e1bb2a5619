"""The T x T Gramian ``J J^T`` of a short, very wide block of task gradients.

Two precisions. The fast one (:func:`working_gramian`) accumulates in the rows' dtype, except
for half types, whose squares overflow (an fp16 gradient of norm above 256 has a squared norm
above 65504): they accumulate in float32, chunk by chunk. When the fast Gramian is not finite
although every gradient is (float32 rows scaled by a ``GradScaler`` at 2^70), the optimizer
recomputes it with :func:`exact_gramian`: float64 accumulation of rows divided by a power of
two near their largest entry, which cannot overflow for finite rows of any dtype below float64.
"""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)
_CHUNK = 1 << 16  # columns per upcast chunk: small next to the buffer, large for the BLAS


def wide_gramian(block: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """``block @ block.T`` for a short, very wide T x n block, computed as a batch of chunks.

    BLAS handles a 3 x 11M by 11M x 3 product poorly (one thread, one long accumulation); a
    batched product over ``chunks`` column slices runs about twice as fast on two threads and
    sums shorter partial products, which is also more accurate.

    Example:
        >>> import torch
        >>> j = torch.randn(3, 1000)
        >>> torch.allclose(wide_gramian(j), j @ j.T, rtol=1e-4, atol=1e-3)
        True
    """
    width = block.shape[1]
    size = width // chunks
    if size < 1024:
        return block @ block.T
    head = block[:, : size * chunks].view(block.shape[0], chunks, size).transpose(0, 1)
    out = torch.bmm(head, head.transpose(1, 2)).sum(0)
    tail = block[:, size * chunks :]
    return out.addmm_(tail, tail.T)


def _upcast_gramian(block: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None):
    out = torch.zeros(block.shape[0], block.shape[0], dtype=dtype, device=block.device)
    for start in range(0, block.shape[1], _CHUNK):
        part = block[:, start : start + _CHUNK].to(dtype)
        if scale is not None:
            part = part / scale[:, None]
        out.addmm_(part, part.T)
    return out


def working_gramian(block: torch.Tensor) -> torch.Tensor:
    """The fast Gramian, as float64: float32 accumulation for half types, else the rows' dtype.

    Example:
        >>> rows = torch.tensor([[300.0, 0.0], [-300.0, 300.0]], dtype=torch.float16)
        >>> working_gramian(rows)                  # 90000 overflows float16
        tensor([[ 90000., -90000.],
                [-90000., 180000.]], dtype=torch.float64)
    """
    if block.dtype in _HALF:
        return _upcast_gramian(block, torch.float32, None).double()
    return wide_gramian(block).double()


def exact_gramian(block: torch.Tensor) -> torch.Tensor:
    """The Gramian accumulated in float64 from rows scaled to a largest entry in [1, 2).

    Finite for every finite block whose true Gramian fits in float64 (always, below float64).

    Example:
        >>> rows = torch.tensor([[2.0**70, 0.0], [-2.0**70, 2.0**70]])  # squares overflow float32
        >>> torch.isfinite(wide_gramian(rows)).all().item(), exact_gramian(rows)[0, 0] == 2.0**140
        (False, tensor(True))
    """
    largest = torch.linalg.vector_norm(block.detach(), float("inf"), dim=1).double()
    # a power of two: dividing by it is exact
    scale = torch.where(largest > 0, torch.exp2(torch.floor(torch.log2(largest))), 1.0)
    return _upcast_gramian(block, torch.float64, scale) * (scale[:, None] * scale[None, :])
