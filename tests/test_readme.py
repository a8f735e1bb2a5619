"""The README's quick start runs as written, and its set-up commands are the ones that work."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAIN_SCRIPT = "examples/bert_sst_qqp_sts.py"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _commands(block: str) -> list[str]:
    lines = (ln.strip() for ln in block.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _set_up() -> list[str]:
    """The commands of the set-up block: the bash block that runs the pipeline."""
    blocks = [b for b in _blocks("bash") if MAIN_SCRIPT in b]
    assert len(blocks) == 1, f"expected one bash block running {MAIN_SCRIPT}, got {len(blocks)}"
    return _commands(blocks[0])


def test_readme_quick_start_runs(capsys):
    blocks = _blocks("python")
    assert blocks, "README.md has no python quick start"
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    stats = namespace["stats"]
    assert stats.tasks == ("sst", "sts")
    assert stats.cosine.shape == (2, 2)
    # the loop ran the interleaved epoch: 4 steps, as many as the largest task has batches
    assert namespace["opt"].state_dict()["state"][0]["step"] == 4
    assert capsys.readouterr().out.endswith("conflicting task pair(s) in the last step\n")


def test_readme_main_command_is_short_and_parses(monkeypatch, tmp_path):
    """The set-up's pipeline command: the best preset, at most 200 characters after the install,
    with flags the pipeline accepts (a renamed flag or preset would break the README silently)."""
    lines = [ln for ln in _set_up() if MAIN_SCRIPT in ln]
    assert len(lines) == 1, f"expected one command running {MAIN_SCRIPT}, got {lines}"
    command = lines[0].split("&&")[-1].strip()
    assert len(command) <= 200, f"{len(command)} characters: {command}"
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words[:words.index(next(w for w in words if "=" not in w))])
    argv = words[next(i for i, w in enumerate(words) if w.endswith(MAIN_SCRIPT)) + 1:]
    assert argv[:2] == ["--preset", "best"], argv
    assert "MTLKIT_DATA_DIR" in env

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(tmp_path))
    import bert_sst_qqp_sts as cli

    parsed = cli.parse_args(argv)
    assert parsed.data_dir == str(tmp_path)
    assert parsed.preset == "best"


def test_readme_set_up_installs_torch_first_and_runs_the_tests():
    commands = _set_up()
    install = next(c for c in commands if "pip install" in c)
    assert commands.index(install) < next(i for i, c in enumerate(commands) if MAIN_SCRIPT in c)
    assert install.index("torch") < install.index("pip install -e"), install
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    tests = [c for c in commands if "-m pytest" in c]
    assert tests and all("MTLKIT_DATA_DIR=" in c for c in tests), tests


def test_readme_links_exist():
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    links = re.findall(r"\]\(((?!https?://)[^)#]+)\)", text)
    assert links, "README.md links no file"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
