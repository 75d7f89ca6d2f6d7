"""Local weights for a benchmark model: a state-dict file read safely and checked against the
architecture, with errors that name the file and the keys that do not fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from aipm_fast.bench.models.base import ModelSpec, WeightsLoadError

__all__ = ["load_weights"]


def _short_list(keys, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsLoadError(f"weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise WeightsLoadError(f"weights file {str(path)!r} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and OS errors alike
        raise WeightsLoadError(
            f"cannot read weights file {str(path)!r} as a state dict "
            f"(torch.load weights_only=True): {type(exc).__name__}: {exc}"
        ) from exc
    # Accept the usual checkpoint wrappers around a state dict.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsLoadError(
            f"weights file {str(path)!r} does not hold a state dict (a mapping of names to tensors); "
            f"found {type(obj).__name__}"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, spec: ModelSpec, path: Path, size: int) -> None:
    state = _read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_short_list(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_short_list(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_short_list(mismatched, 3)}")
        hint = spec.weights_hint(mismatched, size) if spec.weights_hint is not None else ""
        raise WeightsLoadError(
            f"weights file {str(path)!r} does not match the architecture of {spec.name!r}: "
            + "; ".join(problems)
            + hint
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsLoadError(f"cannot load weights file {str(path)!r} into {spec.name!r}: {exc}") from exc
