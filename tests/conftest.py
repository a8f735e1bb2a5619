"""Suite-wide settings: strict skips.

With ``MTLKIT_STRICT_SKIPS=1`` (``.ci/run`` sets it) a skipped test or module fails the run,
unless its skip reason starts with one of :data:`ALLOWED_SKIPS`, each with the reason it may
skip. A missing package, a missing data file or a missing model is then a failure, not a
quiet ``s`` in the progress line.
"""

from __future__ import annotations

import os

import pytest

ALLOWED_SKIPS: dict[str, str] = {
    "needs a CUDA device": "CI machines have no GPU; the GPU checks run on a lent device",
}
"""Skip-reason prefixes that strict mode lets through, each with why it may skip."""

STRICT = os.environ.get("MTLKIT_STRICT_SKIPS", "") not in ("", "0")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in ALLOWED_SKIPS)


def _fail_if_skipped(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (STRICT and report.skipped):
        return
    reason = _skip_reason(report)
    if hasattr(report, "wasxfail") or _allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under MTLKIT_STRICT_SKIPS=1 (not on the allow-list in tests/conftest.py): "
        f"{reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    _fail_if_skipped(outcome.get_result())


def pytest_terminal_summary(terminalreporter: object) -> None:
    if not STRICT:
        return
    skipped = terminalreporter.stats.get("skipped", [])  # type: ignore[attr-defined]
    for report in skipped:
        reason = _skip_reason(report)
        why = next(why for prefix, why in ALLOWED_SKIPS.items() if reason.startswith(prefix))
        terminalreporter.write_line(f"allowed skip: {report.nodeid}: {reason} ({why})")  # type: ignore[attr-defined]
