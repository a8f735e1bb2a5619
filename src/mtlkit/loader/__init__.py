"""Multi-task loading: one DataLoader per task, combined by a mode from one registry.

Implements the "interleaved training with sampling" of the reference paper (section 4): every
step holds one batch of every task, an epoch is as long as the largest task, and smaller tasks
are cycled ("circular sampling") until it ends. The other modes are the usual alternatives
(round-robin, proportional, temperature and explicitly weighted sampling, and the paper's
sequential baseline). The task sequence is a function of ``(seed, epoch)`` alone, so every DDP
rank picks the same task at the same step; see :class:`MultiTaskLoader`.
"""

from mtlkit.loader._modes import Mode
from mtlkit.loader._multi_task_loader import MultiTaskLoader

__all__ = ["Mode", "MultiTaskLoader"]
