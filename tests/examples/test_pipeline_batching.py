"""The pipeline's training batches: length-grouped per-task DataLoaders (transformers'
sampler), random pair orders, and mtlkit.MultiTaskLoader drawing the schedule over them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multitask_bert.batching import PairSwapSampler, multitask_loader, task_loader
from multitask_bert.data import TaskSplit, TokenizedTask, read_split


class _Tokenizer:
    """Token ids of the right length: one id per word."""

    pad_token_id = 0

    def __call__(self, a, b=None, **_):
        rows = [t.split() + (b[i].split() if b else []) for i, t in enumerate(a)]
        return {"input_ids": [[1] * len(r) for r in rows],
                "token_type_ids": [[0] * len(r) for r in rows]}


def _dataset(lengths: list[int], pairs: bool = False) -> TokenizedTask:
    n = len(lengths)
    words = [" ".join(["w"] * k) for k in lengths]
    split = TaskSplit("qqp" if pairs else "sst", "train", Path("x"), [str(i) for i in range(n)],
                      words, list(words) if pairs else None,
                      [float(i % 2) for i in range(n)] if pairs else [i % 5 for i in range(n)])
    return TokenizedTask(split, _Tokenizer(), "cross", 512, both_orders=pairs)


def _waste(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_every_row_with_little_padding() -> None:
    lengths = [(i * 7) % 23 + 1 for i in range(2000)]
    loader = task_loader(_dataset(lengths), batch_size=8, seed=3)
    batches = [b["index"].tolist() for b in loader]
    assert sorted(i for b in batches for i in b) == list(range(2000)) and len(batches) == 250
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [perm[i:i + 8] for i in range(0, 2000, 8)]
    assert _waste(batches, lengths) < _waste(random_batches, lengths) / 4
    # the shuffle is a function of the loader's generator seed alone (what MultiTaskLoader sets)
    loader.generator.manual_seed(5)
    again = [b["index"].tolist() for b in loader]
    loader.generator.manual_seed(5)
    assert [b["index"].tolist() for b in loader] == again != batches


def test_shuffled_order_keeps_the_grouped_batches_and_breaks_the_saw_tooth() -> None:
    lengths = [(i * 7) % 23 + 1 for i in range(2000)]
    grouped = [b["index"].tolist() for b in task_loader(_dataset(lengths), 8, seed=3)]
    shuffled = [b["index"].tolist()
                for b in task_loader(_dataset(lengths), 8, seed=3, batch_order="shuffled")]
    # the same batches (the grouper's draws come first), in another order
    assert sorted(shuffled) == sorted(grouped) and shuffled != grouped

    def longest(batches: list[list[int]]) -> list[int]:
        return [max(lengths[i] for i in b) for b in batches]

    # grouped: inside each mega-batch of 50 batches the lengths never rise (longest first)
    g = longest(grouped)
    assert all(g[k] >= g[k + 1] for k in range(len(g) - 1) if (k + 1) % 50)
    s = longest(shuffled)
    rises = sum(s[k] < s[k + 1] for k in range(len(s) - 1))
    assert rises > len(s) // 4


def test_unknown_batch_order_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_order: expected one of"):
        task_loader(_dataset([3] * 8), 4, batch_order="sorted")


def test_iterating_never_draws_from_the_global_rng() -> None:
    loader = task_loader(_dataset([3] * 40), batch_size=4, seed=0)
    torch.manual_seed(0)
    want = torch.rand(1)
    torch.manual_seed(0)
    list(loader)
    assert torch.equal(torch.rand(1), want)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 9))
def test_pair_swap_keeps_the_rows_and_flips_some(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    inner = list(range(n))
    order = list(PairSwapSampler(inner, n, g))
    assert [i % n for i in order] == inner and all(0 <= i < 2 * n for i in order)
    g.manual_seed(seed)
    assert list(PairSwapSampler(inner, n, g)) == order  # a function of the seed


def test_pair_swap_flips_about_half_and_redraws_each_pass() -> None:
    n = 2000
    g = torch.Generator().manual_seed(1)
    s = PairSwapSampler(range(n), n, g)
    first = list(s)
    assert 900 < sum(i >= n for i in first) < 1100  # 1000 +- 4.5 sigma
    assert list(s) != first


def test_swapped_items_are_the_other_order(data_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    qqp = read_split(data_dir, "qqp", "train")
    ds = TokenizedTask(qqp, tok, "cross", 64, both_orders=True)
    loader = task_loader(ds, 4, seed=0, swap_pairs=True)
    seen = [(int(i), ids[ids != 0].tolist()) for b in loader
            for i, ids in zip(b["index"], b["input_ids"], strict=True)]
    flipped = 0
    for i, ids in seen:
        straight = tok(qqp.sent1[i], qqp.sent2[i])["input_ids"]
        swapped = tok(qqp.sent2[i], qqp.sent1[i])["input_ids"]
        assert ids in (straight, swapped)
        flipped += ids == swapped != straight
    assert 0 < flipped < len(seen) and sorted(i for i, _ in seen) == list(range(len(qqp)))


def _tasks() -> dict[str, TokenizedTask]:
    return {"a": _dataset([(i % 5) + 1 for i in range(24)]),
            "b": _dataset([(i % 3) + 1 for i in range(16)], pairs=True)}


def _indices(items: list) -> list[dict[str, list[int]]]:
    return [{t: b["index"].tolist() for t, b in item.items()} for item in items]


def test_interleaved_epochs_continue_the_smaller_tasks_pass() -> None:
    """6 batches of a, 4 of b: over 2 epochs b makes exactly 3 passes, each of every row
    once (carry_over: its pass goes on across the epoch boundary instead of restarting)."""
    loader = multitask_loader(_tasks(), {"a": 4, "b": 4}, "interleaved", seed=0)
    assert len(loader) == 6
    b_batches = [item["b"]["index"].tolist() for _ in range(2) for item in loader]
    for k in range(3):
        rows = sorted(i for batch in b_batches[4 * k:4 * k + 4] for i in batch)
        assert rows == list(range(16)), (k, b_batches)


@pytest.mark.parametrize("order", ["grouped", "shuffled"])
@pytest.mark.parametrize("mode", ["interleaved", "sequential", "round_robin"])
def test_resume_mid_epoch_yields_the_rest_exactly(mode: str, order: str) -> None:
    sizes = {"a": 4, "b": 4}
    kw = {"swap_pairs": True, "batch_order": order}
    full = multitask_loader(_tasks(), sizes, mode, seed=7, **kw)
    from multitask_bert.batching import as_task_batches

    epochs = [_indices([as_task_batches(x) for x in full]) for _ in range(2)]
    cut = multitask_loader(_tasks(), sizes, mode, seed=7, **kw)
    list(cut)  # epoch 0
    it = iter(cut)
    head = [as_task_batches(next(it)) for _ in range(3)]
    state = cut.state_dict()
    again = multitask_loader(_tasks(), sizes, mode, seed=7, **kw)
    again.load_state_dict(state)
    rest = [as_task_batches(x) for x in again]
    assert _indices(head) + _indices(rest) == epochs[1]
