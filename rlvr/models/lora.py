"""LoRA adapters for the RL stage (``model.lora``; Tina, Wang et al. 2025; Hu et al. 2022,
LoRA), through peft.

``attach_lora`` injects the adapters into the policy module in place, so everything that
holds the module (the sampler, evaluation, checkpoints) sees the adapted policy, and only
the adapters train. The KL reference is the same module with the adapters switched off
(``AdapterDisabled``): no second copy of the weights. Checkpoints stay Hugging Face
checkpoints of the merged weights (W + scale * B A, loadable with ``from_pretrained``) with
the adapter itself beside them in ``adapter/`` (peft's format: ``PeftModel.from_pretrained``
on the RL stage's starting model); resuming reloads the starting model and the adapter
tensors from the trainer state, so the frozen base is the original one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

PEFT_KEY = "_rlvr_peft"  # where the PeftModel is kept on the module it adapts (not a submodule)
ADAPTER_DIR = "adapter"

__all__ = ["ADAPTER_DIR", "AdapterDisabled", "adapter_state", "attach_lora", "load_adapter_state",
           "merged_state_dict", "peft_of", "save_pretrained"]


def attach_lora(model: nn.Module, settings: Any) -> Any:
    """Inject LoRA adapters (``settings``: r, alpha, dropout, target_modules) into ``model``
    in place and freeze everything else; returns the peft ``PeftModel`` (also kept on
    ``model``, see ``peft_of``). The adapters start as peft initialises them (B = 0), so the
    adapted model computes exactly what ``model`` did."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
                        task_type="CAUSAL_LM")
    for parameter in model.parameters():  # the SFT stage's last gradients: frozen weights keep none
        parameter.grad = None
    peft_model = get_peft_model(model, config)
    model.__dict__[PEFT_KEY] = peft_model  # a plain attribute: registering it would make a module cycle
    return peft_model


def peft_of(model: nn.Module) -> Any:
    """The PeftModel adapting ``model`` (None when it has no adapters)."""
    return model.__dict__.get(PEFT_KEY)


class AdapterDisabled(nn.Module):
    """The base policy under an adapted module: its forward runs with the adapters switched
    off (peft's ``disable_adapter``), so it is the frozen starting policy, bit for bit, without
    a second copy of the weights. Used as the KL reference of a LoRA run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["adapted"] = model  # not a submodule: the reference owns no parameters
        self.config = model.config

    def adapters_off(self) -> Any:
        """A context in which the adapted module computes the base policy."""
        return peft_of(self.adapted).disable_adapter()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapters_off():
            return self.adapted(*args, **kwargs)


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights with every adapter merged in (W + scale * B A) under the plain
    module names, as the model without adapters would have them."""
    state = model.state_dict()
    layers = _lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        module_name, _, leaf = key.rpartition(".base_layer.")
        if module_name in layers and leaf == "weight":
            layer = layers[module_name]
            delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
            value = (value + delta.to(value.dtype)).detach()
        out[key.replace(".base_layer.", ".")] = value
    return out


def save_pretrained(model: Any, directory: Path) -> None:
    """A Hugging Face checkpoint of ``model``: with adapters, the merged weights plus the
    adapter in ``directory/adapter`` (peft's format)."""
    peft_model = peft_of(model)
    if peft_model is None:
        model.save_pretrained(directory)
        return
    model.save_pretrained(directory, state_dict=merged_state_dict(model))
    peft_model.save_pretrained(directory / ADAPTER_DIR)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors (for a checkpoint's trainer state)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put ``adapter_state``'s tensors back (every adapter tensor must be there)."""
    missing = set(adapter_state(model)) - set(state)
    if missing:
        raise ValueError(f"the checkpoint's adapter lacks {sorted(missing)[:3]}: it was written with other "
                         "model.lora settings")
    own = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
