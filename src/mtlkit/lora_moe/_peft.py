"""Building :class:`mtlkit.LoRAMoE`'s experts with peft: check first, inject, undo on failure.

Everything that can be refused is refused before peft touches the model (a model that already
holds adapters, targets that match nothing or a layer that is not ``nn.Linear``); if the injection
itself fails, :func:`restore` puts the original layers, ``requires_grad`` flags and attributes
back, so a corrected retry starts from the untouched model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from mtlkit.lora_moe.config import LoRAMoEConfig


def _lora_config(config: LoRAMoEConfig):  # -> peft.LoraConfig (peft is imported lazily)
    from peft import LoraConfig

    return LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.peft_target_modules,
        use_rslora=config.use_rslora,
        bias="none",
    )


def check_unwrapped(model: nn.Module) -> None:
    """Refuses a model that already holds peft adapters (a second mixture would reset them)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if wrapped or isinstance(model, PeftModel) or hasattr(model, "peft_config"):
        where = f" (at {wrapped[0]!r})" if wrapped else ""
        raise ValueError(
            "model: expected a model without adapters, got one that already holds peft "
            f"adapters{where}, e.g. from another LoRAMoE; wrapping it again would reset the "
            "existing experts. Build the mixture on a fresh copy of the base model."
        )


def find_targets(model: nn.Module, config: LoRAMoEConfig) -> list[str]:
    """The names of the layers peft will adapt; every one must be an ``nn.Linear``."""
    from peft.tuners.tuners_utils import check_target_module_exists

    lora_config = _lora_config(config)
    matched = [
        (name, module)
        for name, module in model.named_modules()
        if name and check_target_module_exists(lora_config, name)
    ]
    if not matched:
        raise ValueError(
            "target_modules: expected names or a regex that match layers of the model, got "
            f"{config.peft_target_modules!r}, which matches nothing"
        )
    for name, module in matched:
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target_modules: expected nn.Linear layers (LoRAMoE supports nn.Linear targets "
                f"only), got {name} of type {type(module).__name__}"
            )
    return [name for name, _ in matched]


def inject(model: nn.Module, config: LoRAMoEConfig, targets: list[str]):
    """Injects one peft LoRA adapter per task into ``model`` (in place).

    Returns the ``PeftModel`` and the adapted layers in module order. The layers' adapters are
    disabled (they return the base output; the routing hooks add the experts) and every expert is
    left trainable, which peft's ``set_adapter`` would not do.
    """
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    lora_config = _lora_config(config)
    first, *rest = config.tasks
    with warnings.catch_warnings():  # peft itself calls transformers' deprecated alias
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        peft_model = get_peft_model(model, lora_config, adapter_name=first)
    for task in rest:
        peft_model.add_adapter(task, lora_config)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if [name for name, _ in layers] != targets:
        raise RuntimeError(
            f"peft adapted {[name for name, _ in layers]}, expected {targets}; please report"
        )
    peft_model.base_model.disable_adapter_layers()
    peft_model.base_model.set_requires_grad(config.tasks, requires_grad=True)
    return peft_model, [m for _, m in layers]


@dataclass
class Snapshot:
    """What :func:`restore` puts back: ``requires_grad`` flags and the model's own attributes."""

    requires_grad: list[tuple[nn.Parameter, bool]]
    attributes: frozenset[str]


def snapshot(model: nn.Module) -> Snapshot:
    """Records the state that peft's injection changes, before it runs."""
    return Snapshot([(p, p.requires_grad) for p in model.parameters()], frozenset(vars(model)))


def restore(model: nn.Module, saved: Snapshot) -> None:
    """Undoes a (possibly partial) injection: the original layers, flags and attributes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for param, flag in saved.requires_grad:
        param.requires_grad_(flag)
    for attribute in set(vars(model)) - saved.attributes:
        delattr(model, attribute)


def head_parameter_ids(model: nn.Module) -> set[int]:
    """The parameters outside a Hugging Face model's ``base_model``: its task heads."""
    backbone = getattr(model, "base_model", model)
    if not isinstance(backbone, nn.Module) or backbone is model:
        return set()
    inside = {id(p) for p in backbone.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in inside}
