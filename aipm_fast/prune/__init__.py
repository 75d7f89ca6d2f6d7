"""Pruning a model for the benchmarks: which weights to remove (magnitude, SNIP, FORCE) and what
the removal does to the model (masked zeros, 2:4 sparse kernels, a smaller dense model).

    from aipm_fast.prune import PruneRequest, prune_model

    request = PruneRequest(method="snip", sparsity=0.95, sparsity_format="masked")
    model, report = prune_model(model, request, batch=(inputs, targets), loss_fn=loss_fn)
    report.as_row()   # params_total, params_nonzero, effective_sparsity, flops_dense, flops_effective, ...

The names are imported when first used, so that reading a report's columns
(aipm_fast.prune.report, which the bench's run files use) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aipm_fast.prune.apply import dense_report, prune_model
    from aipm_fast.prune.masked import make_permanent
    from aipm_fast.prune.report import PruneReport
    from aipm_fast.prune.request import FORMATS, METHODS, PruneError, PruneRequest

_WHERE = {
    "FORMATS": "request",
    "METHODS": "request",
    "PruneError": "request",
    "PruneRequest": "request",
    "PruneReport": "report",
    "dense_report": "apply",
    "make_permanent": "masked",
    "prune_model": "apply",
}

__all__ = [
    "FORMATS",
    "METHODS",
    "PruneError",
    "PruneReport",
    "PruneRequest",
    "dense_report",
    "make_permanent",
    "prune_model",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'aipm_fast.prune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aipm_fast.prune.{_WHERE[name]}"), name)
