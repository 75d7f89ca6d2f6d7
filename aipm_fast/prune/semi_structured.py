"""2:4 semi-structured sparsity: two of every four consecutive input weights of a linear layer
kept, stored compressed (torch.sparse.to_sparse_semi_structured's formats) so that the GPU's
sparse tensor cores skip the zeros: half the multiply-adds of each covered layer, on NVIDIA GPUs
of compute capability 8.0 or newer, at float16 or bfloat16.

Only nn.Linear weights (of the prunable set, layers.py) whose shape the backend takes are
converted; the others stay dense and are named in the report, with the share of the model's
FLOPs the converted layers carry.
"""

from __future__ import annotations

import torch
from torch import nn

from aipm_fast.prune.layers import weight_of
from aipm_fast.prune.request import PruneError

__all__ = ["backend", "check_support", "convert", "two_four_masks", "unsupported_reason"]

#: what 2:4 kernels need, named in every refusal
NEEDS = (
    "format 2:4 needs a CUDA GPU of compute capability 8.0 or newer (Ampere, Hopper: sparse tensor cores) "
    "and float16 or bfloat16 weights (--dtype float16)"
)
HALF = (torch.float16, torch.bfloat16)


def check_support(layers: dict[str, nn.Module]) -> None:
    """Raise PruneError unless the linear layers sit on a GPU and in a dtype that 2:4 kernels take."""
    linears = [layer for layer in layers.values() if isinstance(layer, nn.Linear)]
    if not linears:
        raise PruneError("format 2:4 applies to linear layers, and this model has none that can be pruned")
    weight = linears[0].weight
    if weight.device.type != "cuda":
        raise PruneError(f"{NEEDS}; the model is on {weight.device}")
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < (8, 0):
        name = torch.cuda.get_device_name(weight.device)
        raise PruneError(f"{NEEDS}; {name} has compute capability {capability[0]}.{capability[1]}")
    if weight.dtype not in HALF:
        raise PruneError(f"{NEEDS}; the model's weights are {str(weight.dtype).removeprefix('torch.')}")


def backend():
    """The torch class that compresses and multiplies 2:4 weights: cuSPARSELt where torch has it, else CUTLASS."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


def unsupported_reason(layer: nn.Module, cls) -> str | None:
    """Why the backend cannot take this layer's weight, or None."""
    if not isinstance(layer, nn.Linear):
        return "not a linear layer"
    weight = weight_of(layer)
    limits = cls._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if limits is None:
        return f"dtype {weight.dtype} not supported by {cls.BACKEND}"
    m, n = weight.shape
    rows, cols = limits.sparse_min_rows, limits.sparse_min_cols
    if m < rows or m % rows or n < cols or n % cols:
        return f"shape {m}x{n} is not a multiple of {rows}x{cols} ({cls.BACKEND})"
    return None


def two_four_masks(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In each row, of every four consecutive input weights keep the two of highest score."""
    masks = {}
    for name, s in scores.items():
        out_features, in_features = s.shape
        groups = s.reshape(out_features, in_features // 4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.topk(2, dim=2).indices, True)
        masks[name] = keep.reshape(out_features, in_features)
    return masks


def convert(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor], cls) -> None:
    """Replace each masked layer's weight by its compressed 2:4 form (inference: no gradient)."""
    for name, mask in masks.items():
        layer = layers[name]
        dense = weight_of(layer).detach() * mask.to(weight_of(layer).dtype)
        layer.weight = nn.Parameter(cls.from_dense(dense), requires_grad=False)
