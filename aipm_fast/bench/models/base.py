"""What every benchmark model family shares: the spec type, the optional extras, the errors.

A family (one module of this package) describes each of its models with a :class:`ModelSpec`:
the input kind and sizes it accepts, and the functions that build the model for a size and make
its synthetic inputs. The protocol reads only the spec, never a model's name.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "DISTRIBUTION",
    "EXTRA_PACKAGES",
    "INPUT_KINDS",
    "BenchModelError",
    "MissingExtraError",
    "ModelSpec",
    "WeightsLoadError",
    "require",
]

#: Name of the distribution on PyPI, used in ``pip install`` hints.
DISTRIBUTION = "aipm-fast"

#: Optional extra -> the importable package it provides.
EXTRA_PACKAGES: dict[str, str] = {
    "text": "transformers",
}

INPUT_KINDS = ("image", "tokens")


class BenchModelError(RuntimeError):
    """A benchmark model cannot be built."""


class MissingExtraError(BenchModelError):
    """The optional package a model needs is not installed (or is broken)."""

    def __init__(self, model: str, package: str, extra: str, reason: str | None = None):
        self.model = model
        self.package = package
        self.extra = extra
        self.reason = reason
        self.install_command = f"pip install '{DISTRIBUTION}[{extra}]'"
        if reason is None:
            message = (
                f"model {model!r} needs the optional package {package!r}, which is not "
                f"installed; install it with: {self.install_command}"
            )
        else:
            message = (
                f"model {model!r} needs the optional package {package!r}, which is "
                f"installed but cannot be imported ({reason}); repair it with: "
                f"{self.install_command}"
            )
        super().__init__(message)


class WeightsLoadError(BenchModelError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


#: builder(spec, size) -> the model, random weights, built for inputs of that size.
Builder = Callable[["ModelSpec", int], nn.Module]
#: inputs(spec, size, batch_size, device, dtype) -> a batch (size and batch size already checked).
InputMaker = Callable[..., Any]
#: weights_hint(mismatched keys, size) -> a sentence explaining a shape mismatch, or "".
WeightsHint = Callable[[list, int], str]
#: samples(spec, size, n, device, dtype) -> n varied synthetic training inputs, one per row
#: (images: (n, channels, size, size); tokens: (n, size) token ids), from a seeded generator.
SampleMaker = Callable[..., Any]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark architecture.

    ``input_kind`` is ``"image"`` (sizes are the side of a square RGB image,
    in pixels) or ``"tokens"`` (sizes are sequence lengths). Allowed sizes are
    the multiples of ``size_multiple`` in ``[min_size, max_size]``
    (``max_size=None``: no upper bound). ``builder`` and ``inputs`` are the
    family's functions; ``rebuild_per_size`` says that the architecture itself
    depends on the input size, so a model is built anew for each size.

    For training (``aipm-fast train``): ``channels`` is an image model's input
    channels, ``classes`` the outputs of its classification head (labels must lie
    below it), ``samples`` makes varied synthetic training inputs (None: the model is
    not trainable here), and ``train_refusal`` says why a model cannot be
    trained here.
    """

    name: str
    input_kind: str
    native_size: int
    default_batch_size: int
    description: str
    requires: str | None = None
    min_size: int = 1
    max_size: int | None = None
    size_multiple: int = 1
    builder: Builder | None = field(default=None, repr=False, compare=False)
    inputs: InputMaker | None = field(default=None, repr=False, compare=False)
    rebuild_per_size: bool = False
    weights_hint: WeightsHint | None = field(default=None, repr=False, compare=False)
    channels: int = 3
    classes: int = 1000
    samples: SampleMaker | None = field(default=None, repr=False, compare=False)
    train_refusal: str | None = None

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"{self.name}: input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.requires is not None and self.requires not in EXTRA_PACKAGES:
            raise ValueError(f"{self.name}: unknown extra {self.requires!r}")
        if self.min_size < 1 or self.size_multiple < 1 or self.default_batch_size < 1:
            raise ValueError(f"{self.name}: min_size, size_multiple and default_batch_size must be >= 1")
        if not self.allows(self.native_size):
            raise ValueError(f"{self.name}: native size {self.native_size} violates its own constraints")
        if self.builder is None or self.inputs is None:
            raise ValueError(f"{self.name}: a spec needs its family's builder and inputs functions")

    @property
    def unit(self) -> str:
        return "pixels" if self.input_kind == "image" else "tokens"

    @property
    def smallest_size(self) -> int:
        """The smallest allowed size."""
        return math.ceil(self.min_size / self.size_multiple) * self.size_multiple

    def allows(self, size: int) -> bool:
        return (
            size >= self.min_size
            and (self.max_size is None or size <= self.max_size)
            and size % self.size_multiple == 0
        )

    def allowed_sizes(self) -> str:
        """Human-readable description of the allowed sizes."""
        what = "image side" if self.input_kind == "image" else "sequence length"
        parts = []
        if self.size_multiple > 1:
            parts.append(f"a multiple of {self.size_multiple}")
        if self.max_size is None:
            unit = self.unit if self.smallest_size != 1 else self.unit[:-1]
            parts.append(f"at least {self.smallest_size} {unit}")
        else:
            parts.append(f"between {self.smallest_size} and {self.max_size} {self.unit}")
        return f"{what} must be " + ", ".join(parts)


def require(spec: ModelSpec):
    """Import the optional package ``spec`` needs, or raise MissingExtraError."""
    assert spec.requires is not None
    package = EXTRA_PACKAGES[spec.requires]
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        not_installed = isinstance(exc, ModuleNotFoundError) and exc.name == package
        reason = None if not_installed else f"{type(exc).__name__}: {exc}"
        raise MissingExtraError(spec.name, package, spec.requires, reason) from exc
