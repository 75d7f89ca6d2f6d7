"""The data a training benchmark trains on: synthetic by default, or a local or shipped data set.

    load_data(spec, size, source, batch_size=..., device=..., dtype=...) -> TrainData

``source`` is one of:

* ``None`` (or ``"synthetic"``): SYNTHETIC_BATCHES batches of the model family's own synthetic
  samples (``ModelSpec.samples``) with random labels below the head's classes; no held-out
  split, and no accuracy (random labels have none to learn).
* ``"digits"``: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; the ``digits``
  extra), upsampled bilinearly to the model's input (grey levels repeated over an RGB model's
  channels), HOLDOUT of them held out for accuracy.
* a folder: a torchvision ``ImageFolder`` (one sub-folder of images per class), every image
  resized to the model's input (converted to grey for a one-channel model), HOLDOUT held out.
* an ``.npz`` file with arrays ``x`` (images: N x H x W, N x C x H x W or N x H x W x C with C 1
  or 3; uint8 read as 0-255, else floats) and ``y`` (N integer labels from 0), resized like
  the folder's, HOLDOUT held out.

Images of a data set are scaled to [0, 1] and standardised by the training part's mean and
standard deviation. Everything is loaded once onto the device: these are small data sets, and
a step then measures the model, not a loader. A source that cannot be used raises
:class:`DataError` naming the file (or option) and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from aipm_fast.bench.models.base import DISTRIBUTION, ModelSpec

__all__ = ["HOLDOUT", "SYNTHETIC_BATCHES", "DataError", "TrainData", "load_data"]

SYNTHETIC_BATCHES = 8  # batches in a synthetic data set: an epoch of synthetic data
HOLDOUT = 0.2  # share of a real data set held out for accuracy
SPLIT_SEED = 0  # the held-out split is the same in every run and every command


class DataError(ValueError):
    """A data source cannot be used; the message names it and what is wrong."""


@dataclass
class TrainData:
    """Training inputs and labels on the device, and the held-out split where there is one."""

    name: str  # "synthetic", "digits", or the path given
    x: torch.Tensor  # (N, ...) inputs, as the model takes them
    y: torch.Tensor  # (N,) int64 labels
    classes: int  # labels lie in [0, classes)
    eval_x: torch.Tensor | None = None
    eval_y: torch.Tensor | None = None
    no_accuracy_reason: str | None = None  # why accuracy means nothing here (synthetic labels)

    @property
    def samples(self) -> int:
        return int(self.y.shape[0])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train_samples": self.samples,
            "held_out_samples": 0 if self.eval_y is None else int(self.eval_y.shape[0]),
            "classes": self.classes,
            "input_shape": list(self.x.shape[1:]),
        }


def load_data(
    spec: ModelSpec,
    size: int,
    source: str | None,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TrainData:
    device = torch.device(device)
    if source is None or source == "synthetic":
        data = _synthetic(spec, size, batch_size, device, dtype)
    else:
        if spec.input_kind != "image":
            raise DataError(
                f"--data {source}: {spec.name} takes {spec.input_kind}, and only image data sets are read; "
                "train it on synthetic data (no --data)"
            )
        if source == "digits":
            (images, labels), name = _digits(), "digits"
        elif not os.path.exists(source):
            raise DataError(f"--data {source}: no such file or folder (give digits, an ImageFolder folder or an .npz)")
        elif os.path.isdir(source):
            (images, labels), name = _image_folder(source, spec, size), source
        elif source.endswith(".npz"):
            (images, labels), name = _npz(source), source
        else:
            raise DataError(f"--data {source}: not a folder (ImageFolder) nor an .npz file, and not 'digits'")
        data = _split(name, _fit_images(images, spec, size), labels, spec, device, dtype)
    if data.samples < batch_size:
        raise DataError(
            f"--batch-size {batch_size} is more than the {data.samples} training samples of {data.name}; "
            "lower --batch-size"
        )
    return data


def _synthetic(spec: ModelSpec, size: int, batch_size: int, device, dtype) -> TrainData:
    if spec.samples is None:
        raise DataError(f"{spec.name}: its family makes no synthetic training samples")
    n = SYNTHETIC_BATCHES * batch_size
    x = spec.samples(spec, size, n, device, dtype)
    generator = torch.Generator(device=device)
    generator.manual_seed(SPLIT_SEED)
    y = torch.randint(0, spec.classes, (n,), generator=generator, device=device)
    return TrainData(
        "synthetic", x, y, spec.classes, no_accuracy_reason="synthetic data: the labels are random, none to learn"
    )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            f"--data digits needs scikit-learn, which is not installed: pip install '{DISTRIBUTION}[digits]'"
        ) from None
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)  # grey levels 0..16


def _image_folder(path: str, spec: ModelSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets, transforms

    steps = [transforms.Grayscale(1)] if spec.channels == 1 else [transforms.Lambda(lambda im: im.convert("RGB"))]
    transform = transforms.Compose([*steps, transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        folder = datasets.ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"--data {path}: not a usable ImageFolder ({exc})") from None
    images, labels = [], []
    for i, (file, label) in enumerate(folder.samples):
        try:
            image, _ = folder[i]
        except Exception as exc:  # PIL raises several kinds for a file that is not an image
            raise DataError(f"--data {path}: {file} is not a readable image ({exc})") from None
        images.append(image.numpy())
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise DataError(f"--data {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"--data {path}: not a readable .npz archive ({exc})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"--data {path}: missing array(s) {', '.join(missing)} (found: {', '.join(arrays) or 'none'}); "
            "expected x (images) and y (labels)"
        )
    x, y = arrays["x"], arrays["y"]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"--data {path}: x holds {x.dtype} values, expected numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"--data {path}: x holds NaN or infinite values")
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # N x H x W x C
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] not in (1, 3)):
        raise DataError(
            f"--data {path}: x has shape {x.shape}, expected images N x H x W, N x C x H x W "
            "or N x H x W x C (C 1 or 3)"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"--data {path}: y has shape {y.shape}, expected one label per image of x ({x.shape[0]},)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"--data {path}: y holds {y.dtype} values that are not integer labels")
    if x.shape[0] == 0:
        raise DataError(f"--data {path}: x holds no image")
    if y.min() < 0:
        raise DataError(f"--data {path}: y holds the negative label {int(y.min())}; labels count from 0")
    return x, y.astype(np.int64)


def _fit_images(images: np.ndarray, spec: ModelSpec, size: int) -> torch.Tensor:
    """Images (N x H x W or N x C x H x W, values in [0, 1]) at the model's channels and size."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.shape[1] != spec.channels:
        x = x.mean(dim=1, keepdim=True) if spec.channels == 1 else x.expand(-1, spec.channels, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _split(name: str, x: torch.Tensor, y: np.ndarray, spec: ModelSpec, device, dtype) -> TrainData:
    classes = int(y.max()) + 1
    if classes > spec.classes:
        raise DataError(
            f"--data {name}: labels go up to {classes - 1}, but {spec.name}'s head has {spec.classes} outputs"
        )
    n = x.shape[0]
    held = int(round(HOLDOUT * n))
    if held < 1 or n - held < 1:
        raise DataError(f"--data {name}: {n} sample(s) are too few to hold {HOLDOUT:.0%} out for accuracy")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, held_out = order[held:], order[:held]
    labels = torch.from_numpy(y)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / (std if std > 0 else 1.0)
    return TrainData(
        name,
        x[train].to(device=device, dtype=dtype),
        labels[train].to(device),
        classes,
        eval_x=x[held_out].to(device=device, dtype=dtype),
        eval_y=labels[held_out].to(device),
    )
