"""The command line, built from :class:`~multitask_bert.config.RunConfig`'s fields.

One flag per field (``--lr`` for ``lr``; booleans are switches, ``--no-progress`` for
``progress``), the help text from the field's metadata. :func:`parse_config` reads only the
flags given, lays them over the preset's :class:`RunConfig` (so explicit flags win) and lets
``RunConfig.__post_init__`` check the result; a bad value exits with the parser's usage and
the check's message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Callable, Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

from . import TASKS
from .config import RunConfig
from .presets import ALL_PRESETS, describe


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"sst,qqp"`` -> ``("sst", "qqp")`` (checked by RunConfig).

    >>> parse_tasks(" sts, sst ")
    ('sts', 'sst')
    """
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_task_batch_sizes(text: str) -> dict[str, int]:
    """``"sst=12,qqp=24"`` -> ``{"sst": 12, "qqp": 24}``.

    >>> parse_task_batch_sizes("sst=12, qqp = 24")
    {'sst': 12, 'qqp': 24}
    """
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        task, sep, value = part.partition("=")
        task = task.strip()
        if not sep or task not in TASKS or task in out or not value.strip().isdigit() \
                or int(value) <= 0:
            raise argparse.ArgumentTypeError(
                f"--task-batch-sizes: expected TASK=N pairs such as 'sst=12,qqp=24' (tasks: "
                f"{','.join(TASKS)}; N a positive integer; each task once), got {text!r}")
        out[task] = int(value)
    return out


_PARSERS: dict[str, Callable[[str], Any]] = {"tasks": parse_tasks,
                                             "task_batch_sizes": parse_task_batch_sizes}


def _scalar_type(hint: Any) -> Any:
    """``int`` for ``int | None`` and the like."""
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, hint: Any) -> None:
    meta = f.metadata
    names = (meta.get("flag") or "--" + f.name.replace("_", "-")).split("/")
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"]}
    if hint is bool:
        kw["action"] = "store_false" if f.default is True else "store_true"
    else:
        kind = _PARSERS.get(meta.get("parse", ""), _scalar_type(hint))
        kw["type"] = kind
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default not in (None, {}, ()) and not kw["help"].endswith(")"):
            shown = ",".join(default) if isinstance(default, tuple) else default
            kw["help"] += f" (default: {shown})"
    group.add_argument(*names, **kw)


def build_parser(prog: str = "bert_sst_qqp_sts.py", description: str = "") -> (
        argparse.ArgumentParser):
    """The parser: one flag per :class:`RunConfig` field; every default is the preset's."""
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
        epilog="presets (rows of the paper's Table 1) and recipes:\n  "
        + "\n  ".join(describe(n) for n in ALL_PRESETS))
    hints = get_type_hints(RunConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(RunConfig):
        if f.metadata.get("flag", "") is None:  # not a flag (the ensemble's groups)
            continue
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        _add_field(groups[group], f, hints[f.name])
    for action in p._actions:
        if action.dest == "preset":
            action.choices = list(ALL_PRESETS)
    return p


def parse_config(argv: Sequence[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``argv``: the preset's values, overridden by the flags given.

    ``--data-dir`` defaults to ``$MTLKIT_DATA_DIR``. Exits (``SystemExit``) with the parser's
    message on a bad flag or a bad combination.
    """
    parser = parser or build_parser()
    given = vars(parser.parse_args(argv))
    base = ALL_PRESETS.get(given.get("preset") or "", RunConfig())
    given.setdefault("data_dir", os.environ.get("MTLKIT_DATA_DIR") or base.data_dir)
    try:
        cfg = dataclasses.replace(base, **given)
    except ValueError as exc:
        parser.error(str(exc))
    if not cfg.data_dir:
        parser.error("--data-dir: expected the directory of the CS224N CSV files (or set "
                     "$MTLKIT_DATA_DIR), got none")
    return cfg
