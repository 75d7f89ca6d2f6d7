"""Parameters and FLOPs of a model, as pruning reports them.

FLOPs are those of one input sample's forward pass (the batch's first sample), counted by
torch.utils.flop_counter.FlopCounterMode: every matrix multiply, convolution and attention
product, 2 FLOPs per multiply-add, nothing for element-wise operations, norms or biases. The
prunable layers' own FLOPs are counted by forward hooks (convolutions and linear layers, the
same 2 per multiply-add), so that the share a pruned layer carries is known.

nn.MultiheadAttention's fused fast path (eval mode, no gradient: torch._native_multi_head_attention)
is one operator the counter does not know, which would leave out its projections and its
attention products (a third of ViT-B/16's FLOPs); the count runs with that fast path turned off,
through the same products unfused. On the CPU, attention runs as an operator the counter has
no formula for either (aten._scaled_dot_product_flash_attention_for_cpu): it is given the GPU
kernels' formula, so that a model counts the same wherever it is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aipm_fast.prune.layers import PRUNABLE_TYPES, buffers_restored, forward_batch, weight_of

__all__ = ["ModelCount", "count_model", "first_sample"]


@dataclass(frozen=True)
class ModelCount:
    params_total: int  # every parameter (masked weights counted as their dense size)
    params_nonzero: int  # of those, the nonzero ones (a masked weight's zeros left out)
    prunable_params: int  # the prunable layers' weights (layers.py)
    prunable_nonzero: int
    flops: float  # one sample's forward pass, as executed by dense kernels
    layer_flops: dict[str, float]  # each prunable layer's share of flops
    flops_nonzero: float  # flops less each prunable layer's multiply-adds by zero weights


def first_sample(inputs: Any) -> Any:
    """The batch's first sample, batch dimension kept (a tensor, or a mapping of tensors)."""
    if isinstance(inputs, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs[:1]


def _effective_weight(layer: nn.Module) -> torch.Tensor:
    return weight_of(layer).detach()  # with torch.nn.utils.prune, weight is weight_orig * mask


def _params(model: nn.Module) -> tuple[int, int]:
    total = nonzero = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            mask = getattr(module, f"{name.removesuffix('_orig')}_mask", None) if name.endswith("_orig") else None
            values = p.detach() if mask is None else p.detach() * mask
            total += values.numel()
            nonzero += int(torch.count_nonzero(values))
    return total, nonzero


def _cpu_attention_formula() -> dict:
    """The CPU's attention operator counted as the GPU's attention operators are (module docstring)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: attention}


def count_model(model: nn.Module, inputs: Any, layers: dict[str, nn.Module]) -> ModelCount:
    """The model's parameters and one sample's FLOPs (module docstring) on inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    params_total, params_nonzero = _params(model)
    weights = {name: _effective_weight(layer) for name, layer in layers.items()}
    layer_flops: dict[str, float] = {}

    def hook_for(name):
        def hook(module, args, output):
            if isinstance(module, nn.Linear):
                macs = output.numel() * module.in_features
            else:
                assert isinstance(module, PRUNABLE_TYPES)
                macs = (
                    output.numel()
                    * (module.in_channels // module.groups)
                    * int(torch.tensor(module.kernel_size).prod())
                )
            layer_flops[name] = layer_flops.get(name, 0.0) + 2.0 * macs

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formula())
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # module docstring: its fused operator goes uncounted
    try:
        with torch.no_grad(), buffers_restored(model), counter:
            forward_batch(model, first_sample(inputs))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
    flops = float(counter.get_total_flops())
    zero_flops = sum(
        layer_flops.get(name, 0.0) * (1.0 - int(torch.count_nonzero(w)) / w.numel()) for name, w in weights.items()
    )
    return ModelCount(
        params_total=params_total,
        params_nonzero=params_nonzero,
        prunable_params=sum(w.numel() for w in weights.values()),
        prunable_nonzero=sum(int(torch.count_nonzero(w)) for w in weights.values()),
        flops=flops,
        layer_flops=layer_flops,
        flops_nonzero=flops - zero_flops,
    )
