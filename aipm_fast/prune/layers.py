"""Which weights pruning may touch, and how a batch is fed to a model.

Prunable: the weights of convolutions (nn.Conv1d/2d/3d) and linear layers (nn.Linear and its
subclasses), the layers whose multiply-adds dominate. Left whole: biases, normalisation layers,
embeddings, and the projections of nn.MultiheadAttention (its packed q/k/v weight is a bare
parameter, and it reads its out_proj's weight directly instead of calling the module, so a
mask re-applied before the module's forward would never run there: torchvision's ViT).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["EXCLUDED", "buffers_restored", "forward_batch", "logits_of", "prunable_layers", "weight_of"]

#: what the prunable set leaves out, for reports
EXCLUDED = "biases, normalisation layers, embeddings, nn.MultiheadAttention's projections"

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: layer} of every prunable layer, in module order."""
    inside_attention: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.update(f"{name}.{sub}" if name else sub for sub, _ in module.named_modules() if sub)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and name not in inside_attention
    }


def weight_of(layer: nn.Module) -> torch.Tensor:
    """A prunable layer's weight (with torch.nn.utils.prune: weight_orig x mask, as last computed)."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor), f"{type(layer).__name__} has no weight tensor"
    return weight


@contextlib.contextmanager
def buffers_restored(model: nn.Module):
    """The forward passes of scoring and counting leave the model's buffers as they were: a batch
    norm in training mode would otherwise fold the pruning batch into its running statistics
    (the authors of SNIP and FORCE score a copy of the network)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def forward_batch(model: nn.Module, inputs: Any) -> Any:
    """The model's outputs on inputs: a mapping is passed as keywords (transformers), else positionally."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def logits_of(outputs: Any):
    """The logits tensor of a model's outputs: the tensor itself, `.logits` (transformers) or `["logits"]`."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"cannot find logits in the model's outputs ({type(outputs).__name__}); pass loss_fn(outputs, targets)"
        )
    return logits
