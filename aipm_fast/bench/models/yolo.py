"""YOLOv5s (v6.0), the anchor-based object detector, built with ultralytics (extra ``yolo``).

Backbone and neck come from the YOLOv5 description ultralytics ships; its head is replaced by
the original anchor-based one (:class:`YOLOv5Detect`). Inputs are square images whose side is a
multiple of 32 (the largest stride).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from aipm_fast.bench.models.base import DISTRIBUTION, BenchModelError, ModelSpec, require
from aipm_fast.bench.models.vision import image_inputs

__all__ = ["SPECS", "YOLOv5Detect"]

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


def _prepare_ultralytics() -> None:
    # Importing ultralytics probes the network unless told it is offline, and
    # may pip-install missing requirements on its own; neither is wanted
    # while measuring energy. Explicit user settings win.
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _build_yolov5s(spec: ModelSpec, size: int) -> nn.Module:
    _prepare_ultralytics()
    ultralytics = require(spec)
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
    head.type = "YOLOv5Detect"  # type: ignore[method-assign,assignment]  # ultralytics reads these
    head.np = sum(p.numel() for p in head.parameters())  # type: ignore[assignment]
    model.model[-1] = head
    return model


SPECS = (
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
        builder=_build_yolov5s,
        inputs=image_inputs,
    ),
)
