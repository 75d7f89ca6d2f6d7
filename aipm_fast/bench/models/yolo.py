"""YOLOv5s (v6.0), the anchor-based object detector, built natively in plain torch.

The layers are those of YOLOv5's ``yolov5s.yaml`` (v6.0: depth 0.33, width 0.50), transcribed
once in :data:`_YOLOV5_LAYERS` at the full model's sizes and scaled as YOLOv5 scales them. The
module tree and its names are YOLOv5's (``model.{i}.conv``, ``model.{i}.bn``, ``model.{i}.cv1``,
``model.{i}.m.{j}``, ``model.24.anchors``), so the state dict of a YOLOv5 v6.0 yolov5s loads
with ``--weights`` (YOLOv5's ``.pt`` checkpoints pickle the whole model: save its
``ckpt["model"].float().state_dict()`` in a YOLOv5 checkout first). Ultralytics' own "yolov5su"
weights do not fit: their head is anchor-free. Inputs are square images whose side is a
multiple of 32 (the largest stride).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aipm_fast.bench.models.base import ModelSpec
from aipm_fast.bench.models.vision import image_inputs

__all__ = ["SPECS", "YOLOv5", "YOLOv5Detect"]

# yolov5s.yaml (YOLOv5 v6.0): anchors in pixels for the P3/8, P4/16 and P5/32 outputs.
_YOLOV5_ANCHORS = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)
_YOLOV5_STRIDES = (8, 16, 32)
_YOLOV5S_SCALE = (0.33, 0.50)  # depth, width
_YOLO_CLASSES = 80
# YOLOv5 sets these on every BatchNorm (utils/torch_utils.initialize_weights); a state dict does
# not carry them, and eps changes the outputs of loaded weights.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.03

# yolov5s.yaml's backbone and head, as written there (full-size channels and repeats):
# (from, repeats, module, args). "from" is -1 for the previous layer, else layer indices.
_YOLOV5_LAYERS: tuple[tuple[int | tuple[int, ...], int, str, tuple], ...] = (
    # backbone
    (-1, 1, "Conv", (64, 6, 2, 2)),  # 0-P1/2
    (-1, 1, "Conv", (128, 3, 2)),  # 1-P2/4
    (-1, 3, "C3", (128,)),
    (-1, 1, "Conv", (256, 3, 2)),  # 3-P3/8
    (-1, 6, "C3", (256,)),
    (-1, 1, "Conv", (512, 3, 2)),  # 5-P4/16
    (-1, 9, "C3", (512,)),
    (-1, 1, "Conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 3, "C3", (1024,)),
    (-1, 1, "SPPF", (1024, 5)),  # 9
    # head
    (-1, 1, "Conv", (512, 1, 1)),
    (-1, 1, "Upsample", ()),
    ((-1, 6), 1, "Concat", ()),  # cat backbone P4
    (-1, 3, "C3", (512, False)),  # 13
    (-1, 1, "Conv", (256, 1, 1)),
    (-1, 1, "Upsample", ()),
    ((-1, 4), 1, "Concat", ()),  # cat backbone P3
    (-1, 3, "C3", (256, False)),  # 17 (P3/8-small)
    (-1, 1, "Conv", (256, 3, 2)),
    ((-1, 14), 1, "Concat", ()),  # cat head P4
    (-1, 3, "C3", (512, False)),  # 20 (P4/16-medium)
    (-1, 1, "Conv", (512, 3, 2)),
    ((-1, 10), 1, "Concat", ()),  # cat head P5
    (-1, 3, "C3", (1024, False)),  # 23 (P5/32-large)
    ((17, 20, 23), 1, "Detect", ()),  # 24
)


class Conv(nn.Module):
    """YOLOv5's convolution: Conv2d without bias, BatchNorm, SiLU; 'same' padding by default."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 convolution, with a residual connection when ``shortcut`` (and shapes agree)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: ``n`` bottlenecks on one half, concatenated with the other."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools of ``k`` concatenated with their input."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenates its inputs along the channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


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
                b = conv.bias.view(self.na, -1)  # type: ignore[operator]
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
        scale = self.anchors[i] * self.stride[i]  # type: ignore[index]  # buffers, typed Tensor | Module
        anchor_grid = scale.to(like.dtype).view(1, self.na, 1, 1, 2).expand(shape)
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


def _make_divisible(x: float, divisor: int = 8) -> int:
    return math.ceil(x / divisor) * divisor


def _build_layers(depth: float, width: float, nc: int) -> tuple[list[nn.Module], list[int | tuple[int, ...]]]:
    """YOLOv5's parse_model for :data:`_YOLOV5_LAYERS`: repeats scaled by ``depth`` (never below
    one), channels by ``width`` (rounded up to a multiple of 8). Returns the layers and where each
    takes its input from."""
    layers: list[nn.Module] = []
    sources: list[int | tuple[int, ...]] = []
    ch: list[int] = []  # each layer's output channels
    for f, n, kind, args in _YOLOV5_LAYERS:
        n = max(round(n * depth), 1) if n > 1 else n
        c1 = ch[f] if isinstance(f, int) and ch else 3
        module: nn.Module
        if kind in ("Conv", "C3", "SPPF"):
            c2 = _make_divisible(args[0] * width)
            if kind == "Conv":
                module = Conv(c1, c2, *args[1:])
            elif kind == "C3":
                module = C3(c1, c2, n, *args[1:])
            else:
                module = SPPF(c1, c2, *args[1:])
        elif kind == "Upsample":
            module, c2 = nn.Upsample(scale_factor=2, mode="nearest"), c1
        elif kind == "Concat":
            assert isinstance(f, tuple)
            module, c2 = Concat(), sum(ch[j] for j in f)
        else:  # Detect
            assert isinstance(f, tuple)
            module, c2 = YOLOv5Detect(nc, _YOLOV5_ANCHORS, [ch[j] for j in f], _YOLOV5_STRIDES), 0
        layers.append(module)
        sources.append(f)
        ch.append(c2)
    return layers, sources


class YOLOv5(nn.Module):
    """YOLOv5 (v6.0) at a depth and width multiple: ``model`` holds the 25 layers of
    ``yolov5s.yaml`` under their indices, as YOLOv5's ``DetectionModel`` does.

    In eval mode the output is ``(boxes, raw)``: boxes ``(batch, anchors x cells, nc + 5)`` in
    pixels, and the three levels' raw predictions; in training mode the raw predictions only.
    """

    def __init__(self, depth: float, width: float, nc: int = _YOLO_CLASSES) -> None:
        super().__init__()
        layers, self._sources = _build_layers(depth, width, nc)
        self.model = nn.Sequential(*layers)
        kept = {j for f in self._sources for j in ((f,) if isinstance(f, int) else f) if j != -1}
        self._kept = frozenset(kept)  # the layers whose outputs a later layer reads

    def forward(self, x: torch.Tensor):
        outputs: dict[int, torch.Tensor] = {}
        for i, (layer, f) in enumerate(zip(self.model, self._sources)):
            if isinstance(f, tuple):
                x = layer([x if j == -1 else outputs[j] for j in f])
            elif f != -1:
                x = layer(outputs[f])
            else:
                x = layer(x)
            if i in self._kept:
                outputs[i] = x
        return x


def _build_yolov5s(spec: ModelSpec, size: int) -> nn.Module:
    return YOLOv5(*_YOLOV5S_SCALE, nc=_YOLO_CLASSES)  # fully convolutional: one model for every size


SPECS = (
    ModelSpec(
        name="yolov5s",
        input_kind="image",
        native_size=640,
        default_batch_size=32,
        description=(
            "YOLOv5s v6.0 object detector (depth 0.33, width 0.50, 80 classes, "
            "anchor-based head), 7.2 M parameters, YOLOv5's layer names"
        ),
        min_size=32,
        size_multiple=32,
        builder=_build_yolov5s,
        inputs=image_inputs,
        classes=_YOLO_CLASSES,
        train_refusal=(
            "yolov5s is a detector: training it needs boxes and YOLO's detection loss, which the "
            "training benchmark does not build (it trains classifiers on labels)"
        ),
    ),
)
