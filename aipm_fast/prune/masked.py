"""The masked format: dense kernels with zeros where weights were removed (the seed's case).

The hardware multiplies the zeros like any other weight, so this format saves no time and no
energy by itself; it shows what a sparse kernel could save (the report's flops_effective)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from aipm_fast.prune.layers import weight_of

__all__ = ["apply_masks", "make_permanent"]


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor], reapply: bool) -> None:
    """Zero the removed weights. With reapply, through torch.nn.utils.prune: the layer keeps
    weight_orig and a weight_mask buffer, and a forward pre-hook recomputes weight = weight_orig *
    mask before every pass, so that no optimizer step can bring a removed weight back. Without,
    the zeros are written into the weight once and no hook is left (inference)."""
    for name, mask in masks.items():
        layer = layers[name]
        if reapply:
            torch_prune.custom_from_mask(layer, "weight", mask)
        else:
            with torch.no_grad():
                weight_of(layer).mul_(mask.to(weight_of(layer).dtype))


def make_permanent(model: nn.Module) -> nn.Module:
    """Write the re-applied masks into the weights and remove their hooks (after training: a
    plain state dict, and a model that copy.deepcopy takes after a forward pass with gradients)."""
    for module in model.modules():
        if isinstance(getattr(module, "weight_mask", None), torch.Tensor) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")
    return model
