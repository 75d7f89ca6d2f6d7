"""Check the native YOLOv5s against the one ultralytics builds from its yolov5.yaml (scale 's').

Run by hand where ultralytics is installed (it is not a dependency):

    PYTHONPATH=/tmp/ul python bench/check_yolov5_ultralytics.py

Ultralytics' yolov5.yaml has YOLOv5 v6.0's backbone and neck (layers 0-23) and its own
anchor-free head; the check puts YOLOv5's anchor-based head (``YOLOv5Detect``) on ultralytics'
layers, as the benchmark did before it built the model itself. It compares the state dicts' keys
and shapes, the parameter counts, and the outputs of both models with the same weights on one
fixed input (eval mode, float64 on the CPU, so that a difference is the architecture's, not
rounding's). Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from aipm_fast.bench.models import build_model, make_inputs
from aipm_fast.bench.models.yolo import _YOLOV5_ANCHORS, _YOLOV5_STRIDES, YOLOv5Detect


def ultralytics_yolov5s() -> torch.nn.Module:
    for key, value in {"YOLO_OFFLINE": "True", "YOLO_AUTOINSTALL": "False", "YOLO_VERBOSE": "False"}.items():
        os.environ.setdefault(key, value)  # no network probe, no pip install while importing
    import ultralytics
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    cfg_path = Path(ultralytics.__file__).parent / "cfg" / "models" / "v5" / "yolov5.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg["scale"], cfg["nc"] = "s", 80
    model = DetectionModel(cfg, ch=3, nc=80, verbose=False)
    old = model.model[-1]
    head = YOLOv5Detect(80, _YOLOV5_ANCHORS, (128, 256, 512), _YOLOV5_STRIDES)
    head.f, head.i = old.f, old.i  # type: ignore[assignment]  # ultralytics routes by these
    model.model[-1] = head
    return model


def gflops_at_640(ours: torch.nn.Module, theirs: torch.nn.Module) -> dict:
    """Ours by torch's FlopCounterMode (convolutions and matrix products only) on a 64 px image,
    scaled by the area as every feature map is; ultralytics' by its own thop-based count, before
    and after folding BatchNorm into the convolutions (which removes BatchNorm's operations)."""
    from torch.utils.flop_counter import FlopCounterMode
    from ultralytics.utils.torch_utils import get_flops

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ours(make_inputs("yolov5s", 64, 1, dtype=torch.float64))
    unfused = get_flops(theirs, 640)
    theirs.fuse(verbose=False)  # type: ignore[operator]
    return {
        "gflops_640_ours_flopcounter": counter.get_total_flops() * (640 / 64) ** 2 / 1e9,
        "gflops_640_ultralytics_unfused": unfused,
        "gflops_640_ultralytics_fused": get_flops(theirs, 640),
        "parameters_ultralytics_fused": sum(p.numel() for p in theirs.parameters()),
    }


def main() -> int:
    import ultralytics

    ours = build_model("yolov5s").double().eval()
    theirs = ultralytics_yolov5s().double().eval()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    only_ours = sorted(set(ours_sd) - set(theirs_sd))
    only_theirs = sorted(set(theirs_sd) - set(ours_sd))
    shapes_differ = sorted(k for k in set(ours_sd) & set(theirs_sd) if ours_sd[k].shape != theirs_sd[k].shape)
    bn_eps = sorted({m.eps for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)})

    torch.manual_seed(0)
    for k, v in theirs_sd.items():  # random weights and BN statistics, the same in both
        if v.is_floating_point() and not k.endswith("anchors"):
            v.copy_(torch.randn_like(v) * 0.1 + (1.0 if k.endswith(("running_var", "bn.weight")) else 0.0))
            if k.endswith("running_var"):
                v.abs_()
    ours.load_state_dict(theirs_sd, strict=True)
    x = make_inputs("yolov5s", 640, 1, dtype=torch.float64)
    with torch.no_grad():
        ours_pred, ours_raw = ours(x)
        theirs_out = theirs(x)
    theirs_pred, theirs_raw = theirs_out
    report = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "parameters": {
            "ours": sum(p.numel() for p in ours.parameters()),
            "ultralytics": sum(p.numel() for p in theirs.parameters()),
        },
        "parameters_bn_folded": sum(p.numel() for p in ours.parameters())
        - sum(m.num_features for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)),
        "state_dict_keys": {"ours": len(ours_sd), "ultralytics": len(theirs_sd)},
        "keys_only_ours": only_ours,
        "keys_only_ultralytics": only_theirs,
        "shapes_differ": shapes_differ,
        "ultralytics_bn_eps": bn_eps,
        "output_shape": list(ours_pred.shape),
        "max_abs_diff_boxes": float((ours_pred - theirs_pred).abs().max()),
        "max_abs_diff_raw": max(float((a - b).abs().max()) for a, b in zip(ours_raw, theirs_raw)),
        "max_abs_boxes": float(ours_pred.abs().max()),
    }
    report.update(gflops_at_640(ours, theirs))
    print(json.dumps(report, indent=1))
    same = not (only_ours or only_theirs or shapes_differ) and report["max_abs_diff_raw"] < 1e-9
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
