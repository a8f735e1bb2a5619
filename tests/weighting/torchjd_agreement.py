"""Agreement with torchjd: the largest difference between ``w @ J`` and torchjd's aggregation of
the same Jacobian, per method, over the Jacobians of ``test_weighting_references.py``.

A script, not a test (pytest does not collect it); the tests assert the bounds.

    PYTHONPATH=src python tests/weighting/torchjd_agreement.py
"""

from __future__ import annotations

import warnings

import torch
import torchjd.aggregation as tjd
import weighting_refs as ref  # this script's folder is on sys.path

from mtlkit import weighting

TASKS = (2, 3, 4, 6, 9)


def pairs(num_tasks: int):
    """(name, our weighting, torchjd's aggregator, note) at torchjd's defaults."""
    yield "upgrad", weighting.UPGrad(), tjd.UPGrad(), "default (no 1e-4 ridge)"
    yield "upgrad", weighting.UPGrad(reg_eps=1e-4), tjd.UPGrad(), "reg_eps=1e-4"
    yield "dualproj", weighting.DualProj(), tjd.DualProj(), "default (no 1e-4 ridge)"
    yield "dualproj", weighting.DualProj(reg_eps=1e-4), tjd.DualProj(), "reg_eps=1e-4"
    yield "mgda", weighting.MGDA(), tjd.MGDA(), "torchjd default (Frank-Wolfe, eps 1e-3)"
    yield "mgda", weighting.MGDA(), tjd.MGDA(epsilon=1e-10, max_iters=20000), "torchjd tight"
    yield "cagrad", weighting.CAGrad(0.4), tjd.CAGrad(c=0.4), "c=0.4"
    yield "imtlg", weighting.IMTLG(), tjd.IMTLG(), ""
    yield "aligned_mtl", weighting.AlignedMTL(), tjd.AlignedMTL(), ""
    yield "config", weighting.ConFIG(), tjd.ConFIG(), ""
    yield "fairgrad", weighting.FairGrad(2.0), tjd.FairGrad(alpha=2.0), "alpha=2"
    yield "nash_mtl", weighting.NashMTL(max_norm=1.0), tjd.NashMTL(n_tasks=num_tasks), \
        "max_norm=1 (torchjd's clip)"
    yield "mean", weighting.Mean(), tjd.Mean(), ""
    yield "sum", weighting.Sum(), tjd.Sum(), ""
    if num_tasks == 2:  # with two tasks PCGrad's visiting order does not matter
        yield "pcgrad", weighting.PCGrad(seed=0), tjd.PCGrad(), "T=2 only"


def main() -> None:
    warnings.simplefilter("ignore")
    worst: dict[tuple[str, str], tuple[float, float]] = {}
    for num_tasks in TASKS:
        for seed in range(3):
            jac = ref.random_jacobian(torch.Generator().manual_seed(1000 * num_tasks + seed),
                                      num_tasks)
            gram = jac @ jac.T
            for name, ours, theirs, note in pairs(num_tasks):
                diff = (ours(gram) @ jac - theirs(jac)).abs().max()
                scale = theirs(jac).abs().max() if name != "nash_mtl" else 1.0
                key = (name, note)
                prev = worst.get(key, (0.0, 0.0))
                worst[key] = (max(prev[0], float(diff)), max(prev[1], float(diff / scale)))
    # GradVac: the same visiting orders (seeded generators), four steps
    for num_tasks in TASKS:
        gen = torch.Generator().manual_seed(num_tasks)
        ours, theirs = weighting.GradVac(seed=11), tjd.GradVac()
        torch.manual_seed(11)
        for _ in range(4):
            jac = ref.random_jacobian(gen, num_tasks)
            expected = theirs(jac)
            diff = float((ours(jac @ jac.T) @ jac - expected).abs().max())
            prev = worst.get(("gradvac", "same orders"), (0.0, 0.0))
            worst[("gradvac", "same orders")] = (max(prev[0], diff),
                                                 max(prev[1], diff / float(expected.abs().max())))
    print("| weighting | setting | max abs diff | max rel diff |")
    print("|---|---|---|---|")
    for (name, note), (absolute, relative) in worst.items():
        print(f"| {name} | {note} | {absolute:.1e} | {relative:.1e} |")


if __name__ == "__main__":
    main()
