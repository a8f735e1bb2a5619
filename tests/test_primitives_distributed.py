"""SmartLoss and LoRAMoE inside DistributedDataParallel on 2 gloo processes == one process.

One spawn runs every case; the single-process references run in the test process. SimCSELoss's
gather and MultiTaskLoader have their own 2-process tests (test_contrastive_distributed.py,
test_loader_distributed.py); PCGrad's are in test_surgery_distributed.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from gloo_ranks import run_on_ranks
from mtlkit import LoRAMoE, SmartLoss

pytestmark = pytest.mark.slow  # spawns 2 processes (about 15 s)

WORLD = 2
STEPS = 3

# ------------------------------------------------------------------ SmartLoss
# SmartLoss draws its initial noise with torch.randn(embeddings.shape, generator=...). To compare
# exactly, each rank must perturb its rows with the same numbers the single process draws for
# those rows of the global batch. With a fresh generator per step, rank r first skips the draws
# of the rows before its shard (r * per-rank numel): a generator's normal draws are consumed in
# order, so the global draw is the concatenation of the shards' draws. That premise is checked
# in test_noise_draws_concatenate (not assumed). Everything after the noise is row-wise (the
# ascent step is normalized per token, so the batch-mean's 1/B scale cancels with project=True).
SMART_ROWS, SEQ, EMB, VOCAB, CLASSES = 2, 4, 8, 20, 3  # per-rank numel 64: a multiple of 16
SMART_NUMEL = SMART_ROWS * SEQ * EMB


class SmartNet(torch.nn.Module):
    """An embedding, a row-wise encoder and a classifier; forward returns logits and SMART's R_s,
    so that DDP sees one forward (SMART's extra passes included) per backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, EMB)
        self.enc = torch.nn.Linear(EMB, EMB)
        self.head = torch.nn.Linear(EMB, CLASSES)
        self.smart = SmartLoss(kind="classification", epsilon=0.5, noise_std=0.3,
                               step_size=0.1, num_steps=1)
        self.double()

    def encode(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.enc(emb)).mean(dim=1))

    def forward(self, ids, mask):
        emb = self.emb(ids)
        logits = self.encode(emb)
        return logits, self.smart(self.encode, emb, logits, attention_mask=mask)


def smart_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    n = WORLD * SMART_ROWS
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    mask[::2, -1] = 0  # some padding: no noise there
    return ids, mask, torch.randint(0, CLASSES, (n,), generator=g)


def noise_generator(step: int, rank: int) -> torch.Generator:
    g = torch.Generator().manual_seed(1000 + step)
    if rank:
        torch.randn(rank * SMART_NUMEL, generator=g, dtype=torch.float64)  # the rows before ours
    return g


def train_smart(rank: int, world: int) -> dict:
    net = SmartNet()
    model = DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    rows = WORLD * SMART_ROWS // world
    regs = []
    for step in range(STEPS):
        ids, mask, y = (t[rank * rows : (rank + 1) * rows] for t in smart_batch(step))
        net.smart.generator = noise_generator(step, rank)
        logits, reg = model(ids, mask)
        loss = F.cross_entropy(logits, y) + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        regs.append(float(reg.detach()))
    return {"params": {n: p.detach().clone() for n, p in net.named_parameters()}, "regs": regs}


# ------------------------------------------------------------------ LoRAMoE
TASKS = ("sst", "qqp", "sts")
MOE_ROWS, MOE_SEQ, MOE_VOCAB = 3, 5, 40  # per rank


class MoENet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size=MOE_VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.moe = LoRAMoE(BertModel(config, add_pooling_layer=False), tasks=list(TASKS),
                           r=4, alpha=8)
        self.head = torch.nn.Linear(32, 1)
        self.double()

    def forward(self, ids, task):
        return self.head(self.moe(task=task, input_ids=ids).last_hidden_state[:, 0]).squeeze(-1)


def moe_batch(step: int, mixed: bool):
    """Mixed: every rank's shard holds one sample of each task. Single: one task per step,
    sst, qqp, sst: sst's expert idles in step 1 after a step of Adam (zeros instead of ``None``
    gradients would move it by momentum)."""
    g = torch.Generator().manual_seed(50 + step)
    n = WORLD * MOE_ROWS
    ids = torch.randint(0, MOE_VOCAB, (n, MOE_SEQ), generator=g)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    tasks = [TASKS[i % 3] for i in range(n)] if mixed else [TASKS[step % 2]] * n
    return ids, y, tasks


def train_moe(rank: int, world: int, mixed: bool, find_unused: bool) -> dict:
    net = MoENet()
    model = (DistributedDataParallel(net, find_unused_parameters=find_unused)
             if world > 1 else net)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    rows = WORLD * MOE_ROWS // world
    for step in range(STEPS):
        ids, y, tasks = moe_batch(step, mixed)
        sl = slice(rank * rows, (rank + 1) * rows)
        task = tasks[sl] if mixed else tasks[0]  # one name: LoRAMoE's whole-batch path
        loss = F.mse_loss(model(ids[sl], task), y[sl])
        opt.zero_grad()
        loss.backward()
        none = sorted(n for n, p in net.named_parameters() if p.requires_grad and p.grad is None)
        opt.step()
    params = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    return {"params": params, "no_grad_last_step": none}


def moe_without_find_unused(rank: int) -> str:
    """Single-task batches in plain DDP: the other experts get no gradient; DDP must say so."""
    try:
        train_moe(rank, WORLD, mixed=False, find_unused=False)
    except RuntimeError as exc:
        return str(exc)
    return ""


# ------------------------------------------------------------------ the spawn
def _rank_body(rank: int, world: int) -> dict:
    return {
        "smart": train_smart(rank, world),
        "moe_mixed": train_moe(rank, world, mixed=True, find_unused=False),
        "moe_single_find_unused": train_moe(rank, world, mixed=False, find_unused=True),
        "moe_single_error": moe_without_find_unused(rank),
    }


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_rank_body, tmp_path_factory.mktemp("primitives_ddp"), WORLD)


def assert_params_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-10, msg=name)


def test_noise_draws_concatenate():
    whole = torch.randn(WORLD * SMART_ROWS, SEQ, EMB, generator=noise_generator(0, 0),
                        dtype=torch.float64)
    for rank in range(WORLD):
        mine = torch.randn(SMART_ROWS, SEQ, EMB, generator=noise_generator(0, rank),
                           dtype=torch.float64)
        torch.testing.assert_close(mine, whole[rank * SMART_ROWS : (rank + 1) * SMART_ROWS],
                                   rtol=0, atol=0)


def test_smart_under_ddp_equals_one_process(rank_results):
    reference = train_smart(0, 1)
    assert min(reference["regs"]) > 1e-4, "R_s ~ 0: the comparison would not test SMART"
    for result in rank_results:
        assert_params_close(result["smart"]["params"], reference["params"])


def test_smart_noise_matters(rank_results):
    # guard: without the per-row noise alignment the ranks' results would differ
    net = SmartNet()
    ids, mask, _ = smart_batch(0)
    net.smart.generator = noise_generator(0, 0)
    _, aligned = net(ids[SMART_ROWS:], mask[SMART_ROWS:])
    net.smart.generator = noise_generator(0, 1)
    _, shifted = net(ids[SMART_ROWS:], mask[SMART_ROWS:])
    assert not torch.allclose(aligned, shifted)


def test_lora_moe_mixed_batch_needs_no_find_unused_parameters(rank_results):
    reference = train_moe(0, 1, mixed=True, find_unused=False)
    assert reference["no_grad_last_step"] == []  # every expert got a gradient
    for result in rank_results:
        assert_params_close(result["moe_mixed"]["params"], reference["params"])
    # every expert moved
    initial = dict(MoENet().named_parameters())
    for task in TASKS:
        moved = [n for n, p in reference["params"].items()
                 if f".{task}." in n and not torch.equal(p, initial[n])]
        assert moved, task


def test_lora_moe_single_task_batches_with_find_unused_parameters(rank_results):
    reference = train_moe(0, 1, mixed=False, find_unused=True)
    idle = reference["no_grad_last_step"]
    assert idle and all(".qqp." in n or ".sts." in n for n in idle)  # step 2 trains sst
    for result in rank_results:
        got = result["moe_single_find_unused"]
        assert got["no_grad_last_step"] == idle  # DDP leaves the idle experts' grads None
        assert_params_close(got["params"], reference["params"])


def test_lora_moe_single_task_batches_without_it_raise_in_ddp(rank_results):
    for result in rank_results:
        message = result["moe_single_error"]
        assert "find_unused_parameters" in message, message
