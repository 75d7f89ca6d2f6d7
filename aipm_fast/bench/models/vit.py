"""ViT-B/16 (torchvision), built for the input size: its position embedding has one entry per
16x16 patch, so the architecture itself depends on the size and the model is rebuilt per size."""

from __future__ import annotations

from torch import nn

from aipm_fast.bench.models.base import ModelSpec
from aipm_fast.bench.models.vision import image_inputs, image_samples

__all__ = ["SPECS"]


def _build(spec: ModelSpec, size: int) -> nn.Module:
    import torchvision

    # torchvision's ViT checks that inputs are exactly image_size x image_size.
    return torchvision.models.vit_b_16(weights=None, image_size=size)


def _weights_hint(mismatched: list[str], size: int) -> str:
    if any(m.startswith("encoder.pos_embedding") for m in mismatched):
        return f" (the positional embedding of vit_b_16 depends on the image size; this model was built for {size})"
    return ""


SPECS = (
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
        builder=_build,
        inputs=image_inputs,
        samples=image_samples,
        rebuild_per_size=True,
        weights_hint=_weights_hint,
    ),
)
