"""torchvision image classifiers (AlexNet, ResNets), and the image inputs every vision family feeds.

Sizes are the side of a square RGB image in pixels; the inputs are seeded standard normal noise.
"""

from __future__ import annotations

import torch
from torch import nn

from aipm_fast.bench.models.base import ModelSpec

__all__ = ["INPUT_SEED", "SPECS", "image_inputs", "image_samples"]

# Seed of the synthetic inputs: every run feeds the same tensors.
INPUT_SEED = 0


def image_inputs(spec: ModelSpec, size: int, batch_size: int, device: torch.device, dtype: torch.dtype):
    """A ``(batch_size, channels, size, size)`` tensor of standard normal noise in ``dtype`` from a
    seeded generator on ``device`` (channels: the spec's, 3 for RGB models)."""
    if not dtype.is_floating_point:
        raise ValueError(f"{spec.name}: image inputs need a floating-point dtype, got {dtype}")
    generator = torch.Generator(device=device)
    generator.manual_seed(INPUT_SEED)
    return torch.randn(batch_size, spec.channels, size, size, generator=generator, device=device, dtype=dtype)


def image_samples(spec: ModelSpec, size: int, n: int, device: torch.device, dtype: torch.dtype):
    """n synthetic training images, each its own noise (the same seed as the inference inputs,
    so the first batch is the inference batch)."""
    return image_inputs(spec, size, n, device, dtype)


def _build(spec: ModelSpec, size: int) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, spec.name)(weights=None)


def _classifier(name: str, default_batch_size: int, description: str, **sizes) -> ModelSpec:
    return ModelSpec(
        name=name,
        input_kind="image",
        native_size=224,
        default_batch_size=default_batch_size,
        description=description,
        builder=_build,
        inputs=image_inputs,
        samples=image_samples,
        **sizes,
    )


SPECS = (
    _classifier(
        "alexnet", 1, "AlexNet (torchvision), 61 M parameters; adaptive pooling accepts any size >= 63", min_size=63
    ),
    _classifier("resnet18", 1, "ResNet-18 (torchvision), 11.7 M parameters"),
    _classifier("resnet50", 128, "ResNet-50 (torchvision), 25.6 M parameters"),
)
