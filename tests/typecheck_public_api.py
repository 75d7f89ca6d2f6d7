"""The public API as a type checker sees it: checked by the project's mypy run (pyproject's
[tool.mypy] files), never executed. assert_type fails the check where a public name changes its
type; the deliberate mistakes at the end fail it where a name reads as Any (untyped), since their
`type: ignore` would then be unused (warn_unused_ignores)."""

from typing import assert_type

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

import aipm_fast
from aipm_fast import EngineConfig, Measurement, Meter, Recorder, track_energy
from aipm_fast.prune import PruneReport, PruneRequest, make_permanent, prune_model


def meter_api(m: Meter) -> None:
    assert_type(Meter(cuda=False, gpus=[0]).start(), Meter)
    opened = m.start_window("phase")
    assert_type(opened, Measurement)
    got = m.end_window("phase")
    assert_type(got.total_j, float)
    assert_type(got.energy_j, dict[str, float])
    assert_type(got.uncertainty_j, dict[str, float])
    assert_type(got.method, dict[str, str])
    assert_type(got.duration_s, float)
    with m.window("eval") as w:
        assert_type(w, Measurement)
    assert_type(m.windows(), pd.DataFrame)
    assert_type(m.totals(), pd.DataFrame)
    assert_type(m.inferences(), pd.DataFrame)


def scripts() -> None:
    with track_energy("block", echo=False) as t:
        assert_type(t, Measurement)
    assert_type(aipm_fast.Meter, type[Meter])
    assert_type(aipm_fast.Recorder, type[Recorder])
    assert_type(aipm_fast.EngineConfig, type[EngineConfig])


def pruning(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    request = PruneRequest(method="snip", sparsity=0.95, sparsity_format="masked")
    pruned, report = prune_model(model, request, batch=(x, y), loss_fn=F.cross_entropy)
    assert_type(pruned, nn.Module)
    assert_type(report, PruneReport)
    assert_type(report.as_row(), dict)
    assert_type(report.flops_executed, float)
    assert_type(make_permanent(pruned), nn.Module)


# a class is not an int: mypy must see each public name's real type to report it
_meter: int = Meter  # type: ignore[assignment]
_measurement: int = Measurement  # type: ignore[assignment]
_track: int = track_energy  # type: ignore[assignment]
_recorder: int = Recorder  # type: ignore[assignment]
_config: int = EngineConfig  # type: ignore[assignment]
_lazy: int = aipm_fast.Meter  # type: ignore[assignment]
_request: int = PruneRequest  # type: ignore[assignment]
