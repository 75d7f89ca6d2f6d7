"""The bench's pruning and its model counts: the model pruned as --prune/--sparsity/--sparsity-format
ask (aipm_fast.prune), or counted as it is, and the columns run.json carries of it
(parameters, effective sparsity, FLOPs per inference; runfile.MODEL_COLUMNS)."""

from __future__ import annotations

from typing import Any

from aipm_fast.prune import PruneError, PruneRequest, dense_report, prune_model

__all__ = ["model_columns", "prune_request"]


def prune_request(method: str | None, sparsity: float | None, sparsity_format: str | None) -> PruneRequest | None:
    """The request of the bench's options, or None for the dense model; ValueError names the option."""
    if method is None:
        given = [name for name, value in (("--sparsity", sparsity), ("--sparsity-format", sparsity_format)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} given without --prune METHOD (magnitude, snip or force)")
        return None
    fmt = sparsity_format or "masked"
    if sparsity is None:
        if fmt != "2:4":
            raise ValueError(f"--prune {method} needs --sparsity S, the share of weights to remove in [0, 1)")
        sparsity = 0.5  # 2:4's by definition
    try:
        # inference: the zeros written once, no hook multiplying the masks in every pass
        return PruneRequest(method=method, sparsity=sparsity, sparsity_format=fmt, reapply_masks=False)
    except PruneError as exc:
        raise ValueError(f"--prune/--sparsity/--sparsity-format: {exc}") from None


def model_columns(model, inputs: Any, request: PruneRequest | None, targets=None, loss_fn=None) -> tuple[Any, dict]:
    """(the model to run, its run.json columns). A dense model whose counting fails keeps NaN
    counts with the reason; a pruning that cannot be done raises PruneError. targets and
    loss_fn (training): the batch's labels and the loss that SNIP's and FORCE's gradients are of."""
    if request is not None:
        batch = inputs if targets is None else (inputs, targets)
        model, report = prune_model(model, request, batch=batch, loss_fn=loss_fn)
        return model, {**report.as_row(), "model_count_missing_reason": None}
    try:
        report = dense_report(model, inputs)
    except Exception as exc:  # counting is a side figure: the energy benchmark goes on without it
        return model, {"model_count_missing_reason": f"parameters and FLOPs not counted: {type(exc).__name__}: {exc}"}
    return model, {**report.as_row(), "model_count_missing_reason": None}
