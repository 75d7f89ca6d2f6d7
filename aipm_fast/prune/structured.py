"""Structured channel pruning: whole output channels (and the inputs that read them) removed,
so that the model is a smaller dense one and every kernel does less work.

Only channels that nothing but the next layer reads are removed, so residual connections and
the model's outputs keep their widths. The groups found:

- in an nn.Sequential (VGG, LeNet, AlexNet stacks; ViT's MLP block): a convolution or linear
  layer followed, through element-wise layers (activations, dropout), its batch norm and (between
  convolutions) pooling, by the next one of the same kind;
- torchvision's ResNet blocks, inside the block only: conv1 -> conv2 (BasicBlock), conv1 ->
  conv2 -> conv3 (Bottleneck), with their batch norms; the block's last convolution, the stem
  and the downsampling branch keep their widths (they feed the residual sum);
- transformers' encoder layers (BERT): the MLP's hidden units (intermediate.dense ->
  output.dense); attention heads, the hidden size and embeddings are left whole.

Not pruned: grouped or depthwise convolutions, the last convolution before a flatten,
nn.MultiheadAttention (torchvision ViT's attention), anything else outside these groups.
Each group loses round(sparsity x channels) of its channels (one at least is kept), ranked by
their score: the filter's L1 norm (magnitude) or the sum of its weights' SNIP scores |g w|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aipm_fast.prune.layers import weight_of

__all__ = ["ChannelGroup", "channel_groups", "prune_channels"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Mish,
    nn.Dropout,
    nn.Identity,
)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels made by `producer` (its output channels), normalised by `norm`, read only by `consumer`."""

    producer: str
    norm: str | None
    consumer: str


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, CONVS) and layer.groups == 1)


def _sequential_groups(prefix: str, seq: nn.Sequential, prunable: set[str]) -> list[ChannelGroup]:
    groups = []
    children = list(seq.named_children())
    for i, (name, producer) in enumerate(children):
        if _join(prefix, name) not in prunable or not _plain(producer):
            continue
        norm = None
        for other_name, other in children[i + 1 :]:
            if isinstance(other, ELEMENTWISE):
                continue
            if isinstance(producer, CONVS) and isinstance(other, POOLS):
                continue
            if isinstance(producer, CONVS) and norm is None and isinstance(other, NORMS):
                if other.num_features == producer.out_channels:
                    norm = _join(prefix, other_name)
                    continue
                break
            same_kind = type(other) is type(producer) or (
                isinstance(producer, nn.Linear) and isinstance(other, nn.Linear)
            )
            if _join(prefix, other_name) in prunable and _plain(other) and same_kind:
                width_out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
                width_in = other.in_features if isinstance(other, nn.Linear) else other.in_channels
                if width_out == width_in:
                    groups.append(ChannelGroup(_join(prefix, name), norm, _join(prefix, other_name)))
            break
    return groups


def _resnet_groups(prefix: str, block: nn.Module) -> list[ChannelGroup]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    steps = 2 if isinstance(block, BasicBlock) else 3 if isinstance(block, Bottleneck) else 0
    return [
        ChannelGroup(_join(prefix, f"conv{k}"), _join(prefix, f"bn{k}"), _join(prefix, f"conv{k + 1}"))
        for k in range(1, steps)
    ]


def _transformer_mlp_groups(prefix: str, module: nn.Module) -> list[ChannelGroup]:
    """A transformers encoder layer's MLP: intermediate.dense feeds only output.dense."""
    up = getattr(getattr(module, "intermediate", None), "dense", None)
    down = getattr(getattr(module, "output", None), "dense", None)
    if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and up.out_features == down.in_features:
        return [ChannelGroup(_join(prefix, "intermediate.dense"), None, _join(prefix, "output.dense"))]
    return []


def channel_groups(model: nn.Module, prunable: set[str]) -> list[ChannelGroup]:
    """Every group of channels that can be removed without changing what other layers see."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        have_torchvision = False
    else:
        have_torchvision = True
    groups: list[ChannelGroup] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            groups += _sequential_groups(name, module, prunable)
        if have_torchvision:
            groups += _resnet_groups(name, module)
        groups += _transformer_mlp_groups(name, module)
    return [g for g in groups if g.producer in prunable and g.consumer in prunable]


def _index(t: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else t.index_select(dim, keep.to(t.device))


def _rebuilt(layer: nn.Module, keep_out: torch.Tensor | None, keep_in: torch.Tensor | None) -> nn.Module:
    """A new layer like `layer` with only the kept output channels and input channels."""
    weight = _index(_index(weight_of(layer).detach(), 0, keep_out), 1, keep_in)
    old_bias = layer.bias
    bias = None if not isinstance(old_bias, torch.Tensor) else _index(old_bias.detach(), 0, keep_out)
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: nn.Module
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    else:
        new = type(layer)(
            weight.shape[1],
            weight.shape[0],
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=bias is not None,
            padding_mode=layer.padding_mode,
            **factory,
        )
    with torch.no_grad():
        weight_of(new).copy_(weight)
        if bias is not None:
            new_bias = new.bias
            assert isinstance(new_bias, torch.Tensor)
            new_bias.copy_(bias)
    new.train(layer.training)
    return new


def _rebuilt_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    state = norm.state_dict()
    new = type(norm)(
        len(keep),
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
        device=keep.device,
    )
    floating = [v for v in state.values() if v.is_floating_point()]
    if floating:
        new = new.to(dtype=floating[0].dtype)
    with torch.no_grad():
        for key, value in state.items():
            kept = value if value.dim() == 0 else value.index_select(0, keep.to(value.device))
            getattr(new, key).copy_(kept)
    new.train(norm.training)
    return new


def _replace(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent, _, attr = qualified.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def prune_channels(
    model: nn.Module, groups: list[ChannelGroup], channel_scores: dict[str, torch.Tensor], sparsity: float
) -> int:
    """Remove round(sparsity x width) channels of every group, the lowest-scoring ones
    (channel_scores: producer -> one score per output channel); returns how many were removed."""
    keep_out: dict[str, torch.Tensor] = {}
    keep_in: dict[str, torch.Tensor] = {}
    norms: dict[str, torch.Tensor] = {}
    removed = 0
    for g in groups:
        scores = channel_scores[g.producer]
        n_keep = max(1, len(scores) - round(sparsity * len(scores)))
        keep = torch.topk(scores, n_keep, sorted=False).indices.sort().values
        removed += len(scores) - n_keep
        keep_out[g.producer] = keep
        keep_in[g.consumer] = keep
        if g.norm is not None:
            norms[g.norm] = keep
    for name in dict.fromkeys([*keep_out, *keep_in]):
        layer = model.get_submodule(name)
        _replace(model, name, _rebuilt(layer, keep_out.get(name), keep_in.get(name)))
    for name, keep in norms.items():
        _replace(model, name, _rebuilt_norm(model.get_submodule(name), keep))
    return removed
