"""Private: building :class:`mtlkit.LoRAMoE`'s experts with peft."""

from __future__ import annotations

import warnings

from torch import nn

from mtlkit._lora_moe_config import LoRAMoEConfig


def build_experts(model: nn.Module, config: LoRAMoEConfig) -> tuple[nn.Module, list[nn.Module]]:
    """Injects one peft LoRA adapter per task into ``model`` (in place).

    Returns the ``PeftModel`` and the adapted layers in module order. The layers' adapters are
    disabled (they return the base output; the routing hooks add the experts) and every expert is
    left trainable, which peft's ``set_adapter`` would not do.

    Raises:
        ValueError: ``target_modules`` match nothing, or match a layer that is not ``nn.Linear``.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    lora_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.peft_target_modules,
        use_rslora=config.use_rslora,
        bias="none",
    )
    first, *rest = config.tasks
    try:
        with warnings.catch_warnings():  # peft itself calls transformers' deprecated alias
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            peft_model = get_peft_model(model, lora_config, adapter_name=first)
    except ValueError as err:
        raise ValueError(f"target_modules: peft could not adapt the model: {err}") from err
    for task in rest:
        peft_model.add_adapter(task, lora_config)
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if not isinstance(module, LoraLinear):
                raise ValueError(
                    f"target_modules: {name} is a {type(module.get_base_layer()).__name__}; "
                    "LoRAMoE supports nn.Linear targets only"
                )
            layers.append(module)
    peft_model.base_model.disable_adapter_layers()
    peft_model.base_model.set_requires_grad(config.tasks, requires_grad=True)
    return peft_model, layers
