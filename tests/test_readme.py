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
             if "examples/bert_sst_qqp_sts.py" in ln and not ln.lstrip().startswith("#")]
    assert lines, "README.md has no command running examples/bert_sst_qqp_sts.py"
    import bert_sst_qqp_sts as cli

    for line in lines:
        words = shlex.split(line)
        argv = words[words.index(next(w for w in words if w.endswith("bert_sst_qqp_sts.py")))
                     + 1:]
        argv = argv[:argv.index("&&")] if "&&" in argv else argv
        args = cli.parse_args(argv)
        assert args.data_dir == str(tmp_path)
    assert "bert_sst_qqp_sts" in sys.modules
