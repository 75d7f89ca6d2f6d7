"""prune_model: scores, masks and the chosen format applied to a model, and the report of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aipm_fast.prune import masked, scores, semi_structured, structured
from aipm_fast.prune.counting import ModelCount, count_model
from aipm_fast.prune.layers import EXCLUDED, buffers_restored, forward_batch, logits_of, prunable_layers
from aipm_fast.prune.report import PruneReport
from aipm_fast.prune.request import PruneError, PruneRequest

__all__ = ["dense_report", "prune_model"]

#: seed of the synthetic targets used when no loss is given
TARGET_SEED = 0

LossFn = Callable[[Any, Any], torch.Tensor]


def _split(batch) -> tuple[Any, Any]:
    """(inputs, targets) of a batch given as (inputs, targets), or as inputs alone (targets None)."""
    if batch is None:
        raise PruneError(
            "prune_model needs a batch: its inputs are what FLOPs are counted on and what snip and force score with"
        )
    if isinstance(batch, tuple) and len(batch) == 2:
        return batch
    return batch, None


def _loss(inputs, targets, loss_fn: LossFn | None) -> tuple[scores.LossOf, str]:
    """loss_of(model) on the batch, and what it is."""
    if loss_fn is not None:
        if targets is None:
            raise PruneError("loss_fn given without targets: pass batch=(inputs, targets)")
        return (lambda model: loss_fn(forward_batch(model, inputs), targets)), "the caller's loss_fn on one batch"
    if targets is not None:
        what = "cross-entropy of the logits against the batch's targets"
    else:
        what = "cross-entropy of the logits against seeded random class targets (no targets given)"

    def loss_of(model):
        logits = logits_of(forward_batch(model, inputs)).float()
        flat = logits.reshape(-1, logits.shape[-1])
        if targets is not None:
            wanted = targets.reshape(-1).to(logits.device)
        else:
            generator = torch.Generator(device="cpu").manual_seed(TARGET_SEED)
            wanted = torch.randint(flat.shape[1], (flat.shape[0],), generator=generator).to(logits.device)
        return F.cross_entropy(flat, wanted)

    return loss_of, what


def _report(
    what: tuple[str, str, float],
    dense: ModelCount,
    after: ModelCount,
    *,
    score: str,
    loss: str | None,
    flops_executed: float,
    semi_share: float,
    layers_pruned: int,
    channels_removed: int,
    left_dense: str,
) -> PruneReport:
    """The report of a pruning; what: (method, sparsity format, requested sparsity)."""
    method, sparsity_format, sparsity = what
    return PruneReport(
        method=method,
        sparsity_format=sparsity_format,
        sparsity=float(sparsity),
        score=score,
        loss=loss,
        params_dense=dense.params_total,
        params_total=after.params_total,
        params_nonzero=after.params_nonzero,
        # of the dense model's nonzero parameters (a bias initialised to zero is no sparsity)
        effective_sparsity=1.0 - after.params_nonzero / dense.params_nonzero,
        prunable_params_dense=dense.prunable_params,
        prunable_sparsity=1.0 - after.prunable_nonzero / dense.prunable_params,
        flops_dense=dense.flops,
        flops_effective=after.flops_nonzero,
        flops_executed=flops_executed,
        semi_structured_flops_share=semi_share,
        layers_pruned=layers_pruned,
        channels_removed=channels_removed,
        left_dense=left_dense,
    )


def _what(request: PruneRequest) -> tuple[str, str, float]:
    return request.method, request.sparsity_format, request.sparsity


def dense_report(model: nn.Module, inputs: Any) -> PruneReport:
    """The counts of an unpruned model, in a report's columns (method 'none', format 'dense')."""
    count = count_model(model, inputs, prunable_layers(model))
    return _report(
        ("none", "dense", 0.0),
        count,
        count,
        score="-",
        loss=None,
        flops_executed=count.flops,
        semi_share=float("nan"),
        layers_pruned=0,
        channels_removed=0,
        left_dense="everything (not pruned)",
    )


def _weight_scores(request, model, layers, loss_of) -> tuple[dict[str, torch.Tensor], str]:
    if request.method == "magnitude":
        return scores.magnitude_scores(layers), "|w|"
    with buffers_restored(model):
        return scores.snip_scores(model, layers, loss_of), "SNIP |g w|, one batch"


def prune_model(
    model: nn.Module, request: PruneRequest, batch=None, loss_fn: LossFn | None = None
) -> tuple[nn.Module, PruneReport]:
    """Prune `model` as `request` says; returns the model (changed in place) and its report.

    batch: (inputs, targets), or inputs alone for inference. loss_fn(outputs, targets) -> loss
    gives snip's and force's gradients; without it they use cross-entropy of the model's logits
    against the batch's targets, or against seeded random classes when there are none (said in
    the report's `loss`). Masks are global over the prunable weights (layers.py). With the masked
    format and request.reapply_masks the masks stay applied while the model trains.
    """
    if not isinstance(request, PruneRequest):
        raise TypeError(f"request must be a PruneRequest, got {type(request).__name__}")
    inputs, targets = _split(batch)
    layers = prunable_layers(model)
    if not layers:
        raise PruneError(f"{type(model).__name__} has no prunable layer (convolution or linear weight)")
    if request.sparsity_format == "2:4":
        semi_structured.check_support(layers)
    dense = count_model(model, inputs, layers)
    loss_of, loss_what = _loss(inputs, targets, loss_fn)
    loss = None if request.method == "magnitude" else loss_what
    excluded = f"excluded from the prunable set: {EXCLUDED}"
    if request.sparsity_format == "masked":
        if request.method == "force":
            with buffers_restored(model):
                masks = scores.force_masks(model, layers, loss_of, request.sparsity, request.force_steps)
            score = f"FORCE |w g| through the masked network, {request.force_steps} steps, exponential schedule"
        else:
            weight_scores, score = _weight_scores(request, model, layers, loss_of)
            masks = scores.global_masks(weight_scores, request.sparsity)
        masked.apply_masks(layers, masks, request.reapply_masks)
        after = count_model(model, inputs, layers)
        return model, _report(
            _what(request),
            dense,
            after,
            score=score + ", global",
            loss=loss,
            flops_executed=dense.flops,
            semi_share=float("nan"),
            layers_pruned=len(layers),
            channels_removed=0,
            left_dense=excluded,
        )
    if request.sparsity_format == "2:4":
        return model, _semi_structured(model, request, layers, inputs, dense, loss_of, loss, excluded)
    return model, _structured(model, request, layers, inputs, dense, loss_of, loss, excluded)


def _semi_structured(model, request, layers, inputs, dense, loss_of, loss, excluded) -> PruneReport:
    cls = semi_structured.backend()
    why = {name: semi_structured.unsupported_reason(layer, cls) for name, layer in layers.items()}
    covered = {name: layer for name, layer in layers.items() if why[name] is None}
    if not covered:
        raise PruneError(f"format 2:4: no linear layer of this model has a shape {cls.BACKEND} takes")
    weight_scores, score = _weight_scores(request, model, covered, loss_of)
    masks = semi_structured.two_four_masks(weight_scores)
    masked.apply_masks(covered, masks, reapply=False)
    after = count_model(model, inputs, layers)  # counted dense, before compression
    semi_structured.convert(covered, masks, cls)
    covered_flops = sum(dense.layer_flops.get(name, 0.0) for name in covered)
    left = [f"{name} ({reason})" for name, reason in why.items() if reason is not None]
    return _report(
        _what(request),
        dense,
        after,
        score=f"{score}, 2 of every 4 input weights ({cls.BACKEND})",
        loss=loss,
        flops_executed=dense.flops - covered_flops / 2,
        semi_share=covered_flops / dense.flops if dense.flops else float("nan"),
        layers_pruned=len(covered),
        channels_removed=0,
        left_dense="; ".join([excluded, *left]),
    )


def _outside_groups(names: list[str], shown: int = 6) -> str:
    """The prunable layers structured pruning left whole, the first few by name."""
    if not names:
        return "every prunable layer is in a channel group"
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return f"{len(names)} prunable layers outside the channel groups (their widths feed a sum or an output): {listed}"


def _structured(model, request, layers, inputs, dense, loss_of, loss, excluded) -> PruneReport:
    groups = structured.channel_groups(model, set(layers))
    if not groups:
        raise PruneError(
            f"format structured: found no channels of {type(model).__name__} that only the next layer reads "
            "(see aipm_fast/prune/structured.py for the layer patterns pruned)"
        )
    producers = {g.producer: layers[g.producer] for g in groups}
    if request.method == "magnitude":
        weight_scores, score = scores.magnitude_scores(producers), "L1 norm of each output channel's filter"
    else:
        with buffers_restored(model):
            weight_scores = scores.snip_scores(model, producers, loss_of)
        score = "SNIP |g w| summed over each output channel's filter, one batch"
    channel_scores = {name: s.flatten(1).sum(dim=1) for name, s in weight_scores.items()}
    removed = structured.prune_channels(model, groups, channel_scores, request.sparsity)
    after = count_model(model, inputs, prunable_layers(model))
    touched = {g.producer for g in groups} | {g.consumer for g in groups}
    untouched = [name for name in layers if name not in touched]
    return _report(
        _what(request),
        dense,
        after,
        score=f"{score}; {request.sparsity:g} of each group's channels removed",
        loss=loss,
        flops_executed=after.flops,
        semi_share=float("nan"),
        layers_pruned=len(touched),
        channels_removed=removed,
        left_dense="; ".join([excluded, _outside_groups(untouched)]),
    )
