"""BregmanProximal: the EMA teacher and SMART's proximal penalty."""

from __future__ import annotations

import pytest
import torch

from mtlkit import BregmanProximal
from mtlkit.smart import functional

torch.set_num_threads(1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(4)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.lin(self.drop(self.bn(x)))


def test_teacher_starts_equal_and_penalty_is_zero():
    torch.manual_seed(0)
    net = Net().eval()
    prox = BregmanProximal(net)
    x = torch.randn(5, 4)
    assert prox(net(x), x).item() == 0.0
    assert all(not p.requires_grad for p in prox.teacher.parameters())


def test_update_is_the_ema_formula_and_copies_buffers():
    torch.manual_seed(0)
    net = Net()
    prox = BregmanProximal(net, beta=0.9)
    before = {k: v.clone() for k, v in prox.teacher.state_dict().items()}
    net.train()
    net(torch.randn(8, 4) * 3 + 1)  # moves BatchNorm's running statistics
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    prox.update()
    for name, p in net.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        torch.testing.assert_close(prox.teacher.get_parameter(name), expected)
    for name, b in net.named_buffers():
        assert torch.equal(prox.teacher.get_buffer(name), b)


def test_penalty_hand_formula_and_gradient_only_to_output():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    prox = BregmanProximal(net, mu=2.5)
    with torch.no_grad():
        prox.teacher.weight.add_(0.3 * torch.randn(3, 4))
    x = torch.randn(6, 4)
    out = net(x)
    got = prox(out, x)
    p, q = out.softmax(-1), prox.teacher(x).softmax(-1)
    ref = 2.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    got.backward()
    assert net.weight.grad.abs().sum() > 0
    assert prox.teacher.weight.grad is None


def test_teacher_stays_in_eval_mode():
    torch.manual_seed(0)
    net = Net()
    prox = BregmanProximal(net).train()
    assert not prox.teacher.training
    x = torch.randn(6, 4)
    torch.testing.assert_close(prox.teacher(x), prox.teacher(x))  # no dropout


def test_registration_and_state_dict():
    net = Net()
    prox = BregmanProximal(net)
    assert prox.model is net
    names = [n for n, _ in prox.named_parameters()]
    assert names and all(n.startswith("teacher.") for n in names)
    assert all(k.startswith("teacher.") for k in prox.state_dict())


def test_larger_mu_keeps_the_model_closer_to_the_teacher():
    def train(mu):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        start = [p.detach().clone() for p in net.parameters()]
        prox = BregmanProximal(net, beta=0.99, mu=mu)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        for _ in range(20):
            opt.zero_grad()
            out = net(x)
            (torch.nn.functional.cross_entropy(out, y) + prox(out, x)).backward()
            opt.step()
            prox.update()
        pairs = zip(net.parameters(), start, strict=True)
        return sum((p.detach() - s).norm() ** 2 for p, s in pairs)

    assert train(mu=1.0) < 0.5 * train(mu=0.0)


def test_regression_penalty_is_mu_times_the_mean_squared_error():
    net = torch.nn.Linear(2, 1)
    prox = BregmanProximal(net, kind="regression", mu=3.0)
    a, b = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [-1.0]])
    assert prox.penalty(a, b).item() == pytest.approx(3.0 * (1.0**2 + 3.0**2) / 2)


def test_binary_penalty_is_the_bernoulli_symmetric_kl_and_single_logits_need_it():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    prox = BregmanProximal(net, kind="binary", mu=0.5)
    with torch.no_grad():
        prox.teacher.weight.add_(0.5)
    x = torch.randn(5, 4)
    out, teacher = net(x).squeeze(-1), prox.teacher(x).squeeze(-1)
    p, q = torch.sigmoid(out.double()), torch.sigmoid(teacher.double())
    kl = lambda u, v: u * (u / v).log() + (1 - u) * ((1 - u) / (1 - v)).log()  # noqa: E731
    ref = 0.5 * (kl(p, q) + kl(q, p)).mean()
    got = prox.penalty(out, teacher)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5) and got.item() > 0
    with pytest.raises(ValueError, match="kind: expected 'binary'"):
        BregmanProximal(net)(net(x), x)  # classification on one logit per example


def test_module_penalty_equals_the_functional_form():
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 3)
    prox = BregmanProximal(net, mu=1.5)
    with torch.no_grad():
        prox.teacher.bias.add_(1.0)
    x = torch.randn(6, 4)
    want = functional.bregman_penalty(net(x), prox.teacher(x), mu=1.5)
    assert prox(net(x), x).item() == want.item() > 0


def test_validation():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="model"):
        BregmanProximal("net")
    with pytest.raises(ValueError, match="beta"):
        BregmanProximal(net, beta=1.0)
    with pytest.raises(TypeError, match="beta"):
        BregmanProximal(net, beta=None)
    with pytest.raises(ValueError, match="mu"):
        BregmanProximal(net, mu=-1.0)
    with pytest.raises(ValueError, match="kind"):
        BregmanProximal(net, kind="ranking")
    prox = BregmanProximal(torch.nn.Identity())
    with pytest.raises(TypeError, match="output"):
        prox([1.0], torch.zeros(1))
    dict_model = BregmanProximal(torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)}))
    dict_model.teacher.forward = lambda x: {"logits": x}
    with pytest.raises(TypeError, match="penalty"):
        dict_model(torch.zeros(1, 2), torch.zeros(1, 2))
