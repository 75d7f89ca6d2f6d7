"""The SNIP paper's networks (Lee et al., ICLR 2019), as its authors' code defines them
(github.com/namhoonlee/snip-public, snip/network.py):

* ``lenet5_caffe``: LeNet5-Caffe on MNIST-shaped 1x28x28 inputs: conv 20 5x5, max-pool 2, conv 50
  5x5, max-pool 2, fc 500 with ReLU, fc 10 (no ReLU after the convolutions, as in Caffe's LeNet
  and the SNIP code); 431 k parameters.
* ``vgg_d``: VGG-D (VGG-16) with batch norm, on CIFAR-10-shaped 3x32x32 inputs: thirteen 3x3
  convolutions, each with batch norm and ReLU, in five blocks ending in a 2x2 max-pool, then fc
  512, batch norm, ReLU, fc 512, batch norm, ReLU, fc 10 (no dropout; the fully connected layers
  are 512 wide, not 4096, and the first one sees the 1x1x512 map a 32x32 input leaves); 15.3 M
  parameters.

Weights are drawn as the SNIP code's default "vs" initializer does (variance scaling: a
truncated normal of variance 1/fan_in), biases zero. The architectures fix the input size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aipm_fast.bench.models.base import ModelSpec
from aipm_fast.bench.models.vision import image_inputs, image_samples

__all__ = ["SPECS", "LeNet5Caffe", "VGGD"]

CLASSES = 10  # MNIST's and CIFAR-10's
#: VGG-D's convolutions: channels per 3x3 convolution, "M" a 2x2 max-pool
VGG_D_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# a truncated normal at two standard deviations has this much of the untruncated one's spread
_TRUNCATED_STD = 0.87962566103423978


class LeNet5Caffe(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten()
        )
        self.classifier = nn.Sequential(nn.Linear(50 * 4 * 4, 500), nn.ReLU(inplace=True), nn.Linear(500, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGD(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_D_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def variance_scaling_init(model: nn.Module) -> nn.Module:
    """The SNIP code's "vs" initializer on every convolution and linear layer: weights from a
    normal truncated at two standard deviations whose variance is 1/fan_in; biases zero."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _build_lenet(spec: ModelSpec, size: int) -> nn.Module:
    return variance_scaling_init(LeNet5Caffe())


def _build_vgg_d(spec: ModelSpec, size: int) -> nn.Module:
    return variance_scaling_init(VGGD())


SPECS = (
    ModelSpec(
        name="lenet5_caffe",
        input_kind="image",
        native_size=28,
        default_batch_size=100,
        description="LeNet5-Caffe of the SNIP paper, 1x28x28 inputs (MNIST-shaped), 10 classes, 431 k parameters",
        min_size=28,
        max_size=28,
        builder=_build_lenet,
        inputs=image_inputs,
        channels=1,
        classes=CLASSES,
        samples=image_samples,
    ),
    ModelSpec(
        name="vgg_d",
        input_kind="image",
        native_size=32,
        default_batch_size=128,
        description=(
            "VGG-D (VGG-16) with batch norm as in the SNIP code, 3x32x32 inputs (CIFAR-10-shaped), "
            "fc 512, 10 classes, 15.3 M parameters"
        ),
        min_size=32,
        max_size=32,
        builder=_build_vgg_d,
        inputs=image_inputs,
        classes=CLASSES,
        samples=image_samples,
    ),
)
