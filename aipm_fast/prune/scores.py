"""Scores of single weights and the global masks they give: magnitude, SNIP and FORCE.

Every mask here is global: one ranking over all prunable weights (layers.py), so a layer may
lose more or less than the requested share; the total removed is exact (ties broken by
torch.topk). A mask is a bool tensor of the weight's shape, True where the weight is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from aipm_fast.prune.layers import weight_of

__all__ = ["force_masks", "force_schedule", "global_masks", "magnitude_scores", "snip_scores"]

#: loss_of(model) -> a scalar loss of the model on the pruning batch
LossOf = Callable[[nn.Module], torch.Tensor]


def magnitude_scores(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """|w| of every prunable weight."""
    return {name: weight_of(layer).detach().float().abs() for name, layer in layers.items()}


def _weight_grads(model: nn.Module, layers: dict[str, nn.Module], loss_of: LossOf) -> dict[str, torch.Tensor]:
    """d loss / d w of every prunable weight, without touching the parameters' .grad."""
    weights = [weight_of(layer) for layer in layers.values()]
    with torch.enable_grad():
        loss = loss_of(model)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return {
        name: torch.zeros_like(w, dtype=torch.float32) if g is None else g.detach().float()
        for (name, w), g in zip(((n, weight_of(layer)) for n, layer in layers.items()), grads)
    }


def snip_scores(model: nn.Module, layers: dict[str, nn.Module], loss_of: LossOf) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity |g * w| (Lee et al. 2019), from one batch, at the weights as they are.

    SNIP normalises the scores by their sum; a global top-k ranks them alike without it."""
    grads = _weight_grads(model, layers, loss_of)
    return {name: (grads[name] * weight_of(layer).detach().float()).abs() for name, layer in layers.items()}


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring (1 - sparsity) of all weights together (at least one)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    n_keep = max(1, flat.numel() - round(sparsity * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return masks


def force_schedule(sparsity: float, steps: int) -> list[float]:
    """The share of weights FORCE keeps after each of its steps: exponential decay from 1 to
    1 - sparsity, step i of n keeping (1 - sparsity) ** (i / n) ('exp' mode of the authors'
    `iterative_pruning`, pruning/pruning_algos.py of github.com/naver/force)."""
    final = 1.0 - sparsity
    return [math.exp((i + 1) * math.log(final) / steps) for i in range(steps)]


def force_masks(
    model: nn.Module, layers: dict[str, nn.Module], loss_of: LossOf, sparsity: float, steps: int
) -> dict[str, torch.Tensor]:
    """FORCE's progressive skeletonization (de Jorge et al. 2021), as its authors' code runs it:
    `iterative_pruning(..., prune_method=3, mode='exp', num_batches=1)` in pruning/pruning_algos.py
    of github.com/naver/force.

    At each step of the schedule (force_schedule) the dense weights are put back and the current
    mask applied by zeroing (no gradient hook: a removed weight still gets its gradient, so it
    can come back); the saliency is |w_dense * g|, g taken through that masked network, and the
    next mask keeps the top share of it globally. The weights are left dense afterwards. One
    difference: the authors keep every weight scoring at least the k-th score (ties can keep
    more); here exactly k are kept."""
    dense = {name: weight_of(layer).detach().clone() for name, layer in layers.items()}
    if sparsity == 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in dense.items()}
    masks: dict[str, torch.Tensor] | None = None
    try:
        for keep in force_schedule(sparsity, steps):
            with torch.no_grad():
                for name, layer in layers.items():
                    weight_of(layer).copy_(dense[name] if masks is None else dense[name] * masks[name])
            grads = _weight_grads(model, layers, loss_of)
            saliency = {name: (dense[name].float() * grads[name]).abs() for name in layers}
            masks = global_masks(saliency, 1.0 - keep)
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                weight_of(layer).copy_(dense[name])
    assert masks is not None
    return masks
