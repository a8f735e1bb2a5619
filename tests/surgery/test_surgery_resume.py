"""Resuming MultiTaskOptimizer/PCGrad from state_dict() continues bit for bit.

Two things a checkpoint must carry for that: the weighting's generator state (whatever device or
memory layout a framework hands it back in; accelerate moves optimizer state to the device) and
the buffer layout of automatic shared-parameter detection (shared parameters first, learned from
the previous step), without which a resumed step sums the Gramian in another order.
Reference: the same run without interruption, compared with ``torch.equal``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlkit import MultiTaskOptimizer, PCGrad
from mtlkit import weighting as weightings

TASKS = ("a", "b", "c")
STEPS, SPLIT = 6, 3


class Interleaved(nn.Module):
    """Shared layers registered between the task heads, so the parameter order interleaves
    shared and task-only parameters (as a model whose pooler only one task uses does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(8, 48)
        self.head_a = nn.Linear(48, 1)
        self.l2 = nn.Linear(48, 48)
        self.head_b = nn.Linear(48, 1)
        self.l3 = nn.Linear(48, 48)
        self.head_c = nn.Linear(48, 1)

    def losses(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + step)
        out = {}
        for k, task in enumerate(TASKS):
            x, y = torch.randn(16, 8, generator=g), torch.randn(16, generator=g) * (k - 1)
            h = torch.tanh(self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x))))))
            out[task] = (getattr(self, f"head_{task}")(h).squeeze(-1) - y).pow(2).mean()
        return out


def make(kind: str, model: nn.Module, seed: int):
    inner = torch.optim.Adam(model.parameters(), lr=0.01)
    if kind == "pcgrad":
        return PCGrad(inner, seed=seed)
    return MultiTaskOptimizer(inner, weightings.by_name(kind) if kind != "pcgrad-weighting"
                              else weightings.PCGrad(seed=seed))


def train(opt, model, steps) -> None:
    for step in steps:
        opt.zero_grad()
        opt.backward(model.losses(step))
        opt.step()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resumed(kind: str, edit=lambda state: state):
    """Weights after SPLIT steps, a save/load into fresh objects, and the remaining steps."""
    model = Interleaved()
    opt = make(kind, model, seed=3)
    train(opt, model, range(SPLIT))
    saved = edit(copy.deepcopy(opt.state_dict()))
    weights = copy.deepcopy(model.state_dict())
    fresh = Interleaved()
    fresh.load_state_dict(weights)
    opt2 = make(kind, fresh, seed=99)  # another seed: the state must bring the generator back
    opt2.load_state_dict(saved)
    train(opt2, fresh, range(SPLIT, STEPS))
    return fresh


def uninterrupted(kind: str):
    model = Interleaved()
    train(make(kind, model, seed=3), model, range(STEPS))
    return model


def assert_same_weights(got: nn.Module, want: nn.Module) -> None:
    for (name, a), (_, b) in zip(got.named_parameters(), want.named_parameters(), strict=True):
        assert torch.equal(a, b), f"{name}: max difference {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("kind", ["pcgrad", "pcgrad-weighting", "upgrad", "mgda"])
def test_resume_with_detected_shared_parameters_is_bit_exact(kind, one_thread):
    assert_same_weights(resumed(kind), uninterrupted(kind))


def test_the_layout_names_the_detected_shared_parameters():
    model = Interleaved()
    opt = make("pcgrad", model, seed=0)
    assert opt.state_dict()["pcgrad"]["auto_shared"] == []  # nothing detected yet
    train(opt, model, range(1))
    names = [n for n, _ in model.named_parameters()]
    shared = [names[i] for i in opt.state_dict()["pcgrad"]["auto_shared"]]
    assert shared == ["l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias"]


def test_explicit_shared_parameters_store_no_layout():
    model = Interleaved()
    body = [*model.l1.parameters(), *model.l2.parameters(), *model.l3.parameters()]
    opt = MultiTaskOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "upgrad",
                             shared_params=body)
    train(opt, model, range(2))
    assert opt.state_dict()["multitask"]["auto_shared"] == []


@pytest.mark.parametrize("kind", ["pcgrad", "upgrad"])
def test_a_state_without_layout_still_loads(kind):
    """States saved before the layout was stored load as a fresh run's layout."""

    def old_format(state):
        key = "pcgrad" if kind == "pcgrad" else "multitask"
        del state[key]["auto_shared"], state[key]["version"]
        return state

    got, want = resumed(kind, old_format), uninterrupted(kind)
    for a, b in zip(got.parameters(), want.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ([0, 99], r"state_dict\['pcgrad'\]\['auto_shared'\]: expected distinct indices in "
              r"\[0, 12\), got \[0, 99\]"),
    ("l1", r"state_dict\['pcgrad'\]\['auto_shared'\]: expected a list of parameter indices"),
    ([1, 1], r"expected distinct indices"),
])
def test_a_bad_layout_is_refused_before_anything_is_restored(bad, match):
    model = Interleaved()
    opt = make("pcgrad", model, seed=0)
    train(opt, model, range(1))
    saved = copy.deepcopy(opt.state_dict())
    saved["pcgrad"]["auto_shared"] = bad
    fresh_opt = make("pcgrad", Interleaved(), seed=5)
    before = fresh_opt.weighting.generator.get_state()
    with pytest.raises(ValueError, match=match):
        fresh_opt.load_state_dict(saved)
    assert torch.equal(fresh_opt.weighting.generator.get_state(), before)
    assert fresh_opt.state_dict()["state"] == {}  # the inner optimizer was not loaded either


def test_a_newer_state_format_is_refused():
    opt = make("upgrad", Interleaved(), seed=0)
    saved = opt.state_dict()
    saved["multitask"]["version"] = 3
    with pytest.raises(ValueError, match=r"state_dict\['multitask'\]\['version'\]: expected a "
                                         r"state format up to 2, got 3"):
        make("upgrad", Interleaved(), seed=0).load_state_dict(saved)


# ------------------------------------------------------------------ generator state tensors
def non_contiguous_copy(state: torch.Tensor) -> torch.Tensor:
    """The same bytes in another tensor, strided (what a device round trip may give back)."""
    wide = torch.stack([state, torch.zeros_like(state)], dim=1)
    out = wide[:, 0]
    assert not out.is_contiguous() and out.data_ptr() != state.data_ptr()
    return out


def int64_round_trip(state: torch.Tensor) -> torch.Tensor:
    return state.to(torch.int64).to(torch.uint8)


@pytest.mark.parametrize("convert", [non_contiguous_copy, int64_round_trip])
@pytest.mark.parametrize("kind", ["pcgrad", "pcgrad-weighting"])
def test_a_generator_state_in_another_tensor_loads_and_continues_exactly(kind, convert,
                                                                         one_thread):
    def edit(state):
        if kind == "pcgrad":
            state["pcgrad"]["generator"] = convert(state["pcgrad"]["generator"])
        else:
            ws = state["multitask"]["weighting_state"]
            ws["generator"] = convert(ws["generator"])
        return state

    assert_same_weights(resumed(kind, edit), uninterrupted(kind))


@pytest.mark.parametrize("kind", ["pcgrad", "pcgrad-weighting"])
def test_a_generator_state_that_is_not_bytes_is_a_clear_error(kind):
    opt = make(kind, Interleaved(), seed=0)
    saved = opt.state_dict()
    if kind == "pcgrad":
        saved["pcgrad"]["generator"] = saved["pcgrad"]["generator"].float()
        where = r"state_dict\['pcgrad'\]\['generator'\]"
    else:
        ws = saved["multitask"]["weighting_state"]
        ws["generator"] = ws["generator"].float()
        where = r"state_dict\['multitask'\]\['weighting_state'\]\['generator'\]"
    with pytest.raises(TypeError, match=where + r": expected a torch.Generator state \(a uint8 "
                                                r"tensor\), got a tensor of torch.float32"):
        make(kind, Interleaved(), seed=1).load_state_dict(saved)
