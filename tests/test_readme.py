"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python quick start"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["stats"].tasks == ("a", "b")


def test_readme_main_command_parses(monkeypatch, tmp_path):
    """The set-up's pipeline command uses flags the example accepts (a renamed or removed
    flag would otherwise break the README silently)."""
    import shlex
    import sys

    examples = str(README.parent / "examples")
    monkeypatch.syspath_prepend(examples)
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(tmp_path))
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"),
                                 flags=re.S))
    lines = [ln for ln in bash.splitlines()
             if re.search(r"examples/(bert_sst_qqp_sts|ensemble)\.py", ln)
             and not ln.lstrip().startswith("#")]
    assert lines, "README.md has no command running the reference pipeline"
    import bert_sst_qqp_sts as cli
    import ensemble

    for line in lines:
        words = shlex.split(line)
        script = next(w for w in words if w.endswith(("bert_sst_qqp_sts.py", "ensemble.py")))
        argv = words[words.index(script) + 1:]
        argv = argv[:argv.index("&&")] if "&&" in argv else argv
        runs = [argv]
        if script.endswith("ensemble.py"):  # the driver's flags, then each recipe's
            driver_args, recipes = ensemble.parse_args(argv)
            runs = [[*r.flags, "--out", driver_args.out] for r in recipes]
        for run in runs:
            assert cli.parse_args(run).data_dir == str(tmp_path)
    assert "bert_sst_qqp_sts" in sys.modules
