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

The torchvision models need only torch and torchvision. Two models need an
optional extra of the ``aipm-fast`` distribution:

* ``yolov5s`` (extra ``yolo``, package ``ultralytics``);
* ``bert`` (extra ``text``, package ``transformers``).

Without the extra, :func:`build_model` raises :class:`MissingExtraError`
whose message gives the ``pip install`` command to run.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "DISTRIBUTION",
    "EXTRA_PACKAGES",
    "MODELS",
    "BenchModelError",
    "MissingExtraError",
    "ModelRow",
    "ModelSpec",
    "WeightsLoadError",
    "YOLOv5Detect",
    "bert_input_ids",
    "build_model",
    "forward",
    "get_spec",
    "is_available",
    "list_models",
    "make_inputs",
    "parse_sizes",
    "validate_size",
]

#: Name of the distribution on PyPI, used in ``pip install`` hints.
DISTRIBUTION = "aipm-fast"

#: Optional extra -> the importable package it provides.
EXTRA_PACKAGES: dict[str, str] = {
    "yolo": "ultralytics",
    "text": "transformers",
}

INPUT_KINDS = ("image", "tokens")

# Seed of the synthetic inputs: every run feeds the same tensors.
INPUT_SEED = 0


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark architecture.

    ``input_kind`` is ``"image"`` (sizes are the side of a square RGB image,
    in pixels) or ``"tokens"`` (sizes are sequence lengths). Allowed sizes are
    the multiples of ``size_multiple`` in ``[min_size, max_size]``
    (``max_size=None``: no upper bound).
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

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"{self.name}: input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.requires is not None and self.requires not in EXTRA_PACKAGES:
            raise ValueError(f"{self.name}: unknown extra {self.requires!r}")
        if self.min_size < 1 or self.size_multiple < 1 or self.default_batch_size < 1:
            raise ValueError(f"{self.name}: min_size, size_multiple and default_batch_size must be >= 1")
        if not self.allows(self.native_size):
            raise ValueError(f"{self.name}: native size {self.native_size} violates its own constraints")

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


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="alexnet",
            input_kind="image",
            native_size=224,
            default_batch_size=1,
            description="AlexNet (torchvision), 61 M parameters; adaptive pooling accepts any size >= 63",
            min_size=63,
        ),
        ModelSpec(
            name="resnet18",
            input_kind="image",
            native_size=224,
            default_batch_size=1,
            description="ResNet-18 (torchvision), 11.7 M parameters",
        ),
        ModelSpec(
            name="resnet50",
            input_kind="image",
            native_size=224,
            default_batch_size=128,
            description="ResNet-50 (torchvision), 25.6 M parameters",
        ),
        ModelSpec(
            name="vit_b_16",
            input_kind="image",
            native_size=224,
            default_batch_size=64,
            description=(
                "ViT-B/16 (torchvision), 86 M parameters; built for the requested size, "
                "so its positional embedding depends on the size"
            ),
            min_size=16,
            size_multiple=16,
        ),
        ModelSpec(
            name="yolov5s",
            input_kind="image",
            native_size=640,
            default_batch_size=32,
            description=(
                "YOLOv5s v6.0 object detector (depth 0.33, width 0.50, 80 classes, "
                "anchor-based head), 7.2 M parameters, built with ultralytics"
            ),
            requires="yolo",
            min_size=32,
            size_multiple=32,
        ),
        ModelSpec(
            name="bert",
            input_kind="tokens",
            native_size=512,
            default_batch_size=128,
            description=(
                "bert-base-uncased architecture (12 layers, hidden 768) with a "
                "sequence-classification head (transformers), 109 M parameters"
            ),
            requires="text",
            min_size=2,
            max_size=512,
        ),
    )
}


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
            sizes.extend(range(start, stop + 1, step))
        else:
            sizes.append(_parse_uint(item, text))
    for size in sizes:
        try:
            validate_size(spec.name, size)
        except ValueError as exc:
            raise ValueError(f"invalid --sizes {text!r}: {exc}") from None
    return sizes


# --------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------


def _require(spec: ModelSpec):
    """Import the optional package ``spec`` needs, or raise MissingExtraError."""
    assert spec.requires is not None
    package = EXTRA_PACKAGES[spec.requires]
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        not_installed = isinstance(exc, ModuleNotFoundError) and exc.name == package
        reason = None if not_installed else f"{type(exc).__name__}: {exc}"
        raise MissingExtraError(spec.name, package, spec.requires, reason) from exc


def _build_torchvision(spec: ModelSpec, size: int) -> nn.Module:
    import torchvision

    if spec.name == "vit_b_16":
        # torchvision's ViT checks that inputs are exactly image_size x image_size.
        return torchvision.models.vit_b_16(weights=None, image_size=size)
    return getattr(torchvision.models, spec.name)(weights=None)


# yolov5s.yaml (YOLOv5 v6.0): anchors in pixels for the P3/8, P4/16 and P5/32
# outputs, and the channels of those outputs at width 0.50.
_YOLOV5_ANCHORS = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)
_YOLOV5S_HEAD_CHANNELS = (128, 256, 512)
_YOLOV5S_SCALE = (0.33, 0.50)  # depth, width
_YOLO_CLASSES = 80


class YOLOv5Detect(nn.Module):
    """The anchor-based detection head of YOLOv5 v6.0.

    Per output level, a 1x1 convolution predicts ``na * (nc + 5)`` channels;
    at inference the predictions are decoded into boxes in pixels. Parameter
    and buffer names follow YOLOv5 (``m.{i}.weight``, ``anchors`` in grid
    units), so YOLOv5 state dicts load into it.
    """

    def __init__(self, nc: int, anchors, ch, strides) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        stride = torch.tensor([float(s) for s in strides])
        self.register_buffer("stride", stride, persistent=False)
        anchors_px = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        self.register_buffer("anchors", anchors_px / stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():  # YOLOv5's prior on objectness and class scores
            for conv, s in zip(self.m, strides):
                b = conv.bias.view(self.na, -1)
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (nc - 0.99))

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, nx, ny, like.device, like.dtype)
        cached = self._grids.get(key)
        if cached is not None and (torch.is_inference_mode_enabled() or not torch.is_inference(cached[0])):
            return cached
        shape = (1, self.na, ny, nx, 2)
        y = torch.arange(ny, device=like.device, dtype=like.dtype)
        x = torch.arange(nx, device=like.device, dtype=like.dtype)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).to(like.dtype).view(1, self.na, 1, 1, 2).expand(shape)
        self._grids[key] = (grid, anchor_grid)
        return grid, anchor_grid

    def _apply(self, fn, *args, **kwargs):
        self._grids = {}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, xs):
        xs = list(xs)
        z = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            xs[i] = x
            if not self.training:
                grid, anchor_grid = self._grid(i, nx, ny, x)
                xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return xs if self.training else (torch.cat(z, 1), xs)


def _prepare_ultralytics() -> None:
    # Importing ultralytics probes the network unless told it is offline, and
    # may pip-install missing requirements on its own; neither is wanted
    # while measuring energy. Explicit user settings win.
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _build_yolov5s(spec: ModelSpec, size: int) -> nn.Module:
    _prepare_ultralytics()
    ultralytics = _require(spec)
    import yaml  # a dependency of ultralytics

    from ultralytics.nn.tasks import DetectionModel

    cfg_path = Path(ultralytics.__file__).parent / "cfg" / "models" / "v5" / "yolov5.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        depth, width = cfg["scales"]["s"][:2]
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise BenchModelError(
            f"ultralytics {getattr(ultralytics, '__version__', '?')} does not ship a usable "
            f"YOLOv5 description at {cfg_path} ({exc}); install a supported version with: "
            f"pip install '{DISTRIBUTION}[{spec.requires}]'"
        ) from exc
    if (depth, width) != _YOLOV5S_SCALE:
        raise BenchModelError(f"unexpected yolov5 's' scale in {cfg_path}: depth {depth}, width {width}")
    cfg["scale"] = "s"
    cfg["nc"] = _YOLO_CLASSES
    # Backbone and neck (layers 0-23) come from the YAML; ultralytics' head for
    # it is the anchor-free one of its "YOLOv5u" models, so it is replaced by
    # the original YOLOv5 head, which is what yolov5s computes.
    model = DetectionModel(cfg, ch=3, nc=_YOLO_CLASSES, verbose=False)
    old = model.model[-1]
    head = YOLOv5Detect(_YOLO_CLASSES, _YOLOV5_ANCHORS, _YOLOV5S_HEAD_CHANNELS, model.stride.tolist())
    for attr in ("f", "i"):
        setattr(head, attr, getattr(old, attr))
    head.type = "YOLOv5Detect"
    head.np = sum(p.numel() for p in head.parameters())
    model.model[-1] = head
    return model


# bert-base-uncased token ids
BERT_CLS_ID = 101
BERT_SEP_ID = 102
BERT_YES_ID = 2748  # "yes"


def _build_bert(spec: ModelSpec, size: int) -> nn.Module:
    transformers = _require(spec)
    # BertConfig()'s defaults are bert-base-uncased's architecture
    # (vocab 30522, 12 layers, hidden 768, 12 heads, 512 positions).
    return transformers.BertForSequenceClassification(transformers.BertConfig())


_BUILDERS = {
    "alexnet": _build_torchvision,
    "resnet18": _build_torchvision,
    "resnet50": _build_torchvision,
    "vit_b_16": _build_torchvision,
    "yolov5s": _build_yolov5s,
    "bert": _build_bert,
}


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
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_weights(model: nn.Module, spec: ModelSpec, path: Path, size: int) -> None:
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
        hint = ""
        if spec.name == "vit_b_16" and any(m.startswith("encoder.pos_embedding") for m in mismatched):
            hint = f" (the positional embedding of vit_b_16 depends on the image size; this model was built for {size})"
        raise WeightsLoadError(
            f"weights file {str(path)!r} does not match the architecture of {spec.name!r}: "
            + "; ".join(problems)
            + hint
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsLoadError(f"cannot load weights file {str(path)!r} into {spec.name!r}: {exc}") from exc


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
    the model will be fed (default: its native size); vit_b_16 is built for
    exactly that size. Raises :class:`MissingExtraError` when the model's
    optional package is missing and :class:`WeightsLoadError` when the weights
    file cannot be used.
    """
    spec = get_spec(name)
    size = spec.native_size if size is None else validate_size(name, size)
    model = _BUILDERS[name](spec, size)
    if weights_path is not None:
        _load_weights(model, spec, Path(weights_path), size)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


# --------------------------------------------------------------------------
# inputs and forward pass
# --------------------------------------------------------------------------


def bert_input_ids(n_tokens: int) -> list[int]:
    """Token ids of a sequence of ``n_tokens``: [CLS], "yes" * (n - 2), [SEP]."""
    if n_tokens < 2:
        raise ValueError(f"bert: a sequence needs at least 2 tokens ([CLS] and [SEP]), got {n_tokens}")
    return [BERT_CLS_ID] + [BERT_YES_ID] * (n_tokens - 2) + [BERT_SEP_ID]


def make_inputs(
    name: str,
    size: int,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Synthetic input batch for model ``name`` at ``size``.

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
    device = torch.device(device)
    if spec.input_kind == "tokens":
        row = torch.tensor(bert_input_ids(size), dtype=torch.int64, device=device)
        input_ids = row.unsqueeze(0).repeat(batch_size, 1)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if not dtype.is_floating_point:
        raise ValueError(f"{name}: image inputs need a floating-point dtype, got {dtype}")
    generator = torch.Generator(device=device)
    generator.manual_seed(INPUT_SEED)
    return torch.randn(batch_size, 3, size, size, generator=generator, device=device, dtype=dtype)


def forward(model: nn.Module, inputs: Any) -> Any:
    """One inference of ``model`` on ``inputs`` (as made by :func:`make_inputs`)."""
    with torch.inference_mode():
        if isinstance(inputs, Mapping):
            return model(**inputs)
        return model(inputs)
