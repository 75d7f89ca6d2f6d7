"""Model zoo for ``aipm-fast bench``.

``aipm-fast bench`` measures the energy of one inference of standard
architectures at several input sizes, following the AIPowerMeter deep-learning
benchmark protocol: pick an architecture and an input size (a square
resolution in pixels for vision models, a sequence length in tokens for text),
run many inferences on synthetic inputs and divide the energy by the number of
inputs processed.

Every model is built from its architecture description with random weights:
nothing is downloaded. Real weights can be loaded from a local state-dict file
with ``build_model(..., weights_path=...)``; random weights cost the same
energy as trained ones, since the amount of computation does not depend on
the values.

The torchvision models need only torch and torchvision; ``yolov5s`` is built
by this package in plain torch (``yolo``), with YOLOv5's layer names. One model
needs an optional extra of the ``aipm-fast`` distribution:

* ``bert`` (extra ``text``, package ``transformers``).

Without the extra, :func:`build_model` raises :class:`MissingExtraError`
whose message gives the ``pip install`` command to run.

The SNIP paper's LeNet5-Caffe and VGG-D (``snip``) need torch only.

Each family is one module (``vision``, ``vit``, ``yolo``, ``bert``, ``snip``) that owns
its builder and its inputs and lists its :class:`ModelSpec` in ``SPECS``; this
module is the registry. A new family is a new module added to ``FAMILIES``.
"""

from __future__ import annotations

import importlib
import importlib.util
import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from aipm_fast.bench.models import bert, snip, vision, vit, yolo
from aipm_fast.bench.models.base import (
    DISTRIBUTION,
    EXTRA_PACKAGES,
    BenchModelError,
    MissingExtraError,
    ModelSpec,
    WeightsLoadError,
)
from aipm_fast.bench.models.bert import bert_input_ids
from aipm_fast.bench.models.weights import load_weights
from aipm_fast.bench.models.yolo import YOLOv5, YOLOv5Detect

__all__ = [
    "DISTRIBUTION",
    "EXTRA_PACKAGES",
    "FAMILIES",
    "MODELS",
    "BenchModelError",
    "MissingExtraError",
    "ModelRow",
    "ModelSpec",
    "WeightsLoadError",
    "YOLOv5",
    "YOLOv5Detect",
    "bert_input_ids",
    "build_model",
    "forward",
    "get_spec",
    "is_available",
    "list_models",
    "make_inputs",
    "parse_sizes",
    "train_forward",
    "validate_size",
]

#: The model families, in the order --list-models shows them.
FAMILIES = (vision, vit, yolo, bert, snip)

MODELS: dict[str, ModelSpec] = {spec.name: spec for family in FAMILIES for spec in family.SPECS}


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; ``ValueError`` listing the known models otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}") from None


class ModelRow(NamedTuple):
    """One line of ``aipm-fast bench --list-models``."""

    name: str
    input_kind: str
    native_size: int
    default_batch_size: int
    requires: str | None
    available: bool


def is_available(name: str) -> bool:
    """Whether the packages model ``name`` needs are installed (without importing them)."""
    spec = get_spec(name)
    if spec.requires is None:
        return True
    try:
        return importlib.util.find_spec(EXTRA_PACKAGES[spec.requires]) is not None
    except (ImportError, ValueError):
        return False


def list_models() -> list[ModelRow]:
    """Rows (name, input kind, native size, default batch size, requires, available)."""
    return [
        ModelRow(
            name=spec.name,
            input_kind=spec.input_kind,
            native_size=spec.native_size,
            default_batch_size=spec.default_batch_size,
            requires=spec.requires,
            available=is_available(spec.name),
        )
        for spec in MODELS.values()
    ]


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


def validate_size(name: str, size: int) -> int:
    """Check that ``size`` is an input size model ``name`` accepts; return it as an int.

    Raises ``ValueError`` naming the model, the size and the allowed sizes.
    """
    spec = get_spec(name)
    if isinstance(size, bool):
        raise ValueError(f"{name}: size {size!r} is not an integer; {spec.allowed_sizes()}")
    try:
        value = operator.index(size)
    except TypeError:
        raise ValueError(f"{name}: size {size!r} is not an integer; {spec.allowed_sizes()}") from None
    if not spec.allows(value):
        raise ValueError(f"{name}: size {value} is not allowed; {spec.allowed_sizes()}")
    return value


_UINT = re.compile(r"\d+")
MAX_SIZES = 256  # input sizes per benchmark: more is a typo in a range, not a study


def _parse_uint(part: str, text: str) -> int:
    part = part.strip()
    if not _UINT.fullmatch(part):
        raise ValueError(f"invalid --sizes {text!r}: {part!r} is not a non-negative integer")
    return int(part)


def parse_sizes(text: str | None, spec: ModelSpec) -> list[int]:
    """Parse the ``--sizes`` option for ``spec``.

    ``text`` is a comma-separated list whose items are sizes (``"112,224"``)
    or inclusive ranges ``start:stop:step`` (``"112:2240:112"`` gives 112,
    224, ..., 2240; the stop value is included when the steps land on it).
    ``None`` gives ``[spec.native_size]``. Every size is checked against the
    model's constraints; errors quote ``text``.
    """
    if text is None:
        return [spec.native_size]
    if not text.strip():
        raise ValueError(f"invalid --sizes {text!r}: no size given")
    sizes: list[int] = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"invalid --sizes {text!r}: empty item in the list")
        if ":" in item:
            parts = item.split(":")
            if len(parts) != 3:
                raise ValueError(f"invalid --sizes {text!r}: range {item.strip()!r} is not start:stop:step")
            start, stop, step = (_parse_uint(p, text) for p in parts)
            if step == 0:
                raise ValueError(f"invalid --sizes {text!r}: range {item.strip()!r} has a zero step")
            if stop < start:
                raise ValueError(f"invalid --sizes {text!r}: range {item.strip()!r} has stop < start")
            sizes.extend(range(start, stop + 1, step)[: MAX_SIZES + 1])  # never expand a huge range
        else:
            sizes.append(_parse_uint(item, text))
        if len(sizes) > MAX_SIZES:
            raise ValueError(f"invalid --sizes {text!r}: more than {MAX_SIZES} sizes")
    for size in sizes:
        try:
            validate_size(spec.name, size)
        except ValueError as exc:
            raise ValueError(f"invalid --sizes {text!r}: {exc}") from None
    return sizes


# --------------------------------------------------------------------------
# building, inputs and the forward pass
# --------------------------------------------------------------------------


def build_model(
    name: str,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
) -> nn.Module:
    """Build model ``name`` in eval mode on ``device`` with floating-point ``dtype``.

    Weights are random unless ``weights_path`` names a local state-dict file
    (read with ``torch.load(weights_only=True)``). ``size`` is the input size
    the model will be fed (default: its native size); a model whose spec says
    ``rebuild_per_size`` is built for exactly that size. Raises
    :class:`MissingExtraError` when the model's optional package is missing and
    :class:`WeightsLoadError` when the weights file cannot be used.
    """
    spec = get_spec(name)
    size = spec.native_size if size is None else validate_size(name, size)
    assert spec.builder is not None  # every spec has one (ModelSpec checks it)
    model = spec.builder(spec, size)
    if weights_path is not None:
        load_weights(model, spec, Path(weights_path), size)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


def make_inputs(
    name: str,
    size: int,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Synthetic input batch for model ``name`` at ``size``, made by its family.

    Vision models get a ``(batch_size, 3, size, size)`` tensor of standard
    normal noise in ``dtype`` from a seeded generator on ``device``. ``bert``
    gets ``{"input_ids", "attention_mask"}`` int64 tensors of shape
    ``(batch_size, size)``: [CLS], ``size - 2`` times "yes", [SEP], all
    attended (``dtype`` does not apply to integer tensors).
    """
    spec = get_spec(name)
    size = validate_size(name, size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name}: batch size must be a positive integer, got {batch_size!r}")
    assert spec.inputs is not None  # every spec has one (ModelSpec checks it)
    return spec.inputs(spec, size, batch_size, torch.device(device), dtype)


def forward(model: nn.Module, inputs: Any) -> Any:
    """One inference of ``model`` on ``inputs`` (as made by :func:`make_inputs`)."""
    with torch.inference_mode():
        if isinstance(inputs, Mapping):
            return model(**inputs)
        return model(inputs)


def train_forward(spec: ModelSpec, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The logits of a training forward pass (gradients kept) on a batch of the spec's samples:
    images go in as they are, token ids as ``input_ids`` (every token attended); a Hugging Face
    output gives its ``logits``."""
    out = model(input_ids=inputs) if spec.input_kind == "tokens" else model(inputs)
    return getattr(out, "logits", out)
