"""Pruning (aipm_fast.prune) on tiny CPU models: masks, scores, formats and their counts."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from aipm_fast.prune import PruneError, PruneRequest, make_permanent, prune_model
from aipm_fast.prune import scores as prune_scores
from aipm_fast.prune.layers import prunable_layers
from aipm_fast.prune.semi_structured import two_four_masks


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def cnn_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randint(10, (8,), generator=generator)


def prunable_zeros(model: nn.Module) -> tuple[int, int]:
    weights = [layer.weight.detach() for layer in prunable_layers(model).values()]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("method", ["magnitude", "snip", "force"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_masks_reach_the_requested_global_sparsity(method, sparsity):
    model = small_cnn()
    model, report = prune_model(model, PruneRequest(method, sparsity), batch=cnn_batch(), loss_fn=F.cross_entropy)
    zeros, total = prunable_zeros(model)
    assert abs(zeros - sparsity * total) <= 1  # global: within one weight of the request
    assert report.prunable_params_dense == total
    assert report.prunable_sparsity == pytest.approx(zeros / total)
    assert report.params_total == report.params_dense  # masked: same dense kernels
    assert report.flops_executed == report.flops_dense  # the zeros are multiplied too
    assert report.flops_effective <= report.flops_dense
    if sparsity >= 0.5:
        assert report.flops_effective < report.flops_dense


def test_masks_are_global_not_per_layer():
    model = small_cnn()
    with torch.no_grad():
        model[9].weight.add_(5.0)  # the last layer's weights outrank every other's (init: below 0.2)
    prune_model(model, PruneRequest("magnitude", 0.9), batch=cnn_batch())
    assert int((model[9].weight == 0).sum()) == 0
    assert float((model[7].weight == 0).float().mean()) > 0.9


def test_snip_scores_are_g_times_w_computed_by_hand():
    torch.manual_seed(3)
    layer = nn.Linear(5, 3, bias=False)
    model = nn.Sequential(layer)
    x = torch.randn(4, 5)
    t = torch.randn(4, 3)
    # loss = sum_b t_b . (W x_b): dL/dW = sum_b outer(t_b, x_b) = t^T x
    by_hand = (t.T @ x * layer.weight.detach()).abs()
    scores = prune_scores.snip_scores(model, {"0": layer}, lambda m: (m(x) * t).sum())
    torch.testing.assert_close(scores["0"], by_hand)
    assert layer.weight.grad is None  # the parameters' .grad is left alone

    request = PruneRequest("snip", 0.6)
    model, report = prune_model(model, request, batch=(x, t), loss_fn=lambda out, target: (out * target).sum())
    kept = layer.weight.detach() != 0
    n_keep = 15 - round(0.6 * 15)
    assert int(kept.sum()) == n_keep
    assert set(torch.topk(by_hand.flatten(), n_keep).indices.tolist()) == set(kept.flatten().nonzero()[:, 0].tolist())
    assert report.loss == "the caller's loss_fn on one batch"


def test_snip_without_a_loss_says_it_used_synthetic_targets():
    model, report = prune_model(small_cnn(), PruneRequest("snip", 0.5), batch=cnn_batch()[0])
    assert "seeded random class targets" in report.loss
    _, with_targets = prune_model(small_cnn(), PruneRequest("snip", 0.5), batch=cnn_batch())
    assert "the batch's targets" in with_targets.loss


def test_force_schedule_is_exponential_to_the_final_density():
    schedule = prune_scores.force_schedule(0.99, 10)
    assert len(schedule) == 10
    for i, keep in enumerate(schedule, start=1):
        assert keep == pytest.approx(0.01 ** (i / 10))
    assert schedule[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(schedule, schedule[1:]))


def test_force_in_one_step_is_snip_and_in_ten_is_not():
    batch = cnn_batch()

    def masks_of(method, steps):
        model = small_cnn()
        prune_model(model, PruneRequest(method, 0.99, force_steps=steps), batch=batch, loss_fn=F.cross_entropy)
        return torch.cat([layer.weight.detach().flatten() != 0 for layer in prunable_layers(model).values()])

    snip = masks_of("snip", 1)
    assert torch.equal(masks_of("force", 1), snip)  # its first step is SNIP on the dense network
    force = masks_of("force", 10)
    assert int(force.sum()) == int(snip.sum())
    assert int((force != snip).sum()) > 0.2 * int(snip.sum())  # progressive: a different skeleton


def test_force_gradient_goes_through_the_masked_network(monkeypatch):
    """Every step after the first sees the weights its previous mask removed as zeros."""
    model = small_cnn()
    layers = prunable_layers(model)
    seen = []
    real = prune_scores._weight_grads

    def spy(m, ls, loss_of):
        seen.append(sum(int((layer.weight == 0).sum()) for layer in ls.values()))
        return real(m, ls, loss_of)

    monkeypatch.setattr(prune_scores, "_weight_grads", spy)
    dense = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    prune_scores.force_masks(model, layers, lambda m: F.cross_entropy(m(cnn_batch()[0]), cnn_batch()[1]), 0.9, 4)
    total = sum(w.numel() for w in dense.values())
    expected = [0] + [round((1 - k) * total) for k in prune_scores.force_schedule(0.9, 4)[:-1]]
    assert seen == expected
    for name, layer in layers.items():  # and the dense weights are put back
        assert torch.equal(layer.weight.detach(), dense[name])


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
)
def test_masked_weights_stay_zero_while_training(make_optimizer):
    model = small_cnn()
    x, y = cnn_batch()
    model, _ = prune_model(model, PruneRequest("magnitude", 0.8), batch=(x, y))
    zero = {name: (layer.weight.detach() == 0) for name, layer in prunable_layers(model).items()}
    optimizer = make_optimizer(model.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)  # the masks are re-applied before each forward pass
    for name, layer in prunable_layers(model).items():
        assert int(layer.weight.detach()[zero[name]].abs().sum()) == 0
        assert float(layer.weight.detach()[~zero[name]].abs().sum()) > 0
    make_permanent(model)  # the zeros written into plain weights, the hooks gone
    for name, layer in prunable_layers(model).items():
        assert isinstance(layer.weight, nn.Parameter) and not layer._forward_pre_hooks
        assert int(layer.weight.detach()[zero[name]].abs().sum()) == 0
    copy.deepcopy(model)


def test_masked_for_inference_leaves_no_hook():
    model = small_cnn()
    model, _ = prune_model(model, PruneRequest("magnitude", 0.5, reapply_masks=False), batch=cnn_batch()[0])
    for layer in prunable_layers(model).values():
        assert not layer._forward_pre_hooks
        assert isinstance(layer.weight, nn.Parameter)


def _check_structured(model, inputs, sparsity=0.5, method="magnitude"):
    model.eval()
    with torch.no_grad():
        before = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    model, report = prune_model(model, PruneRequest(method, sparsity, "structured"), batch=inputs)
    with torch.no_grad():
        after = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    before = getattr(before, "logits", before)
    after = getattr(after, "logits", after)
    assert after.shape == before.shape
    assert report.params_total == sum(p.numel() for p in model.parameters())
    assert report.params_total < report.params_dense
    assert report.flops_executed < report.flops_dense
    assert report.flops_executed == report.flops_effective or report.flops_effective <= report.flops_executed
    assert report.channels_removed > 0
    assert 0 < report.effective_sparsity < 1
    return model, report


def test_structured_resnet_prunes_inside_blocks_only():
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    model, report = _check_structured(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), x, 0.5, "snip")
    assert model.layer1[0].conv1.out_channels == 32 and model.layer1[0].bn1.num_features == 32
    assert model.layer1[0].conv2.in_channels == 32 and model.layer1[0].conv2.out_channels == 64  # residual width
    assert model.conv1.out_channels == 64 and model.fc.in_features == 512
    model, report = _check_structured(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16), x, 0.9)
    block = model.layer2[0]
    assert (block.conv1.out_channels, block.conv2.in_channels, block.conv2.out_channels, block.conv3.in_channels) == (
        3,
        3,
        3,
        3,
    )
    assert block.conv3.out_channels == 512


def test_structured_vit_prunes_the_mlp_hidden_units():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model, report = _check_structured(vit, torch.randn(2, 3, 32, 32), 0.75)
    for layer in model.encoder.layers:
        assert layer.mlp[0].out_features == 16 and layer.mlp[3].in_features == 16
        assert layer.mlp[3].out_features == 32
        assert layer.self_attention.embed_dim == 32  # attention left whole
    assert report.channels_removed == 2 * 48


def test_structured_bert_prunes_the_intermediate_units():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config)
    ids = torch.randint(64, (2, 16))
    model, report = _check_structured(bert, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 0.5, "snip")
    for layer in model.bert.encoder.layer:
        assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
        assert layer.attention.self.query.out_features == 32


def test_structured_plain_stack_and_what_it_counts():
    model, report = _check_structured(small_cnn(), cnn_batch()[0], 0.5)
    assert model[0].out_channels == 4 and model[1].num_features == 4 and model[4].in_channels == 4
    assert model[4].out_channels == 16  # the last convolution before the flatten keeps its width
    assert model[7].out_features == 16 and model[9].in_features == 16
    assert report.prunable_sparsity == pytest.approx(
        1 - sum(layer.weight.numel() for layer in prunable_layers(model).values()) / report.prunable_params_dense
    )


def test_two_four_refused_on_cpu_naming_what_is_needed():
    with pytest.raises(PruneError, match=r"compute capability 8\.0 or newer.*float16.*the model is on cpu"):
        prune_model(small_cnn(), PruneRequest("magnitude", 0.5, "2:4"), batch=cnn_batch()[0])


def test_two_four_masks_keep_the_two_best_of_every_four():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])
    mask = two_four_masks({"w": scores})["w"]
    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]
    big = two_four_masks({"w": torch.rand(64, 128)})["w"]
    assert torch.all(big.reshape(64, 32, 4).sum(dim=2) == 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "magnitude", "sparsity": 1.0}, r"sparsity 1\.0: must be a number in \[0, 1\)"),
        ({"method": "magnitude", "sparsity": -0.1}, r"sparsity -0\.1"),
        ({"method": "magnitude", "sparsity": math.nan}, r"sparsity nan"),
        ({"method": "random", "sparsity": 0.5}, r"pruning method 'random': choose one of magnitude, snip, force"),
        ({"method": "snip", "sparsity": 0.5, "sparsity_format": "csr"}, r"sparsity format 'csr'"),
        ({"method": "snip", "sparsity": 0.9, "sparsity_format": "2:4"}, r"0\.5 by definition"),
        ({"method": "force", "sparsity": 0.5, "sparsity_format": "2:4"}, r"force with format 2:4"),
        ({"method": "force", "sparsity": 0.5, "sparsity_format": "structured"}, r"force with format structured"),
    ],
)
def test_bad_requests_are_refused_clearly(kwargs, message):
    with pytest.raises(PruneError, match=message):
        PruneRequest(**kwargs)


def test_a_loss_without_targets_and_no_batch_are_refused():
    with pytest.raises(PruneError, match="pass batch=\\(inputs, targets\\)"):
        prune_model(small_cnn(), PruneRequest("snip", 0.5), batch=cnn_batch()[0], loss_fn=F.cross_entropy)
    with pytest.raises(PruneError, match="needs a batch"):
        prune_model(small_cnn(), PruneRequest("magnitude", 0.5))


def test_report_row_has_the_columns_the_tables_read():
    from aipm_fast.prune.report import NUMERIC_COLUMNS, TEXT_COLUMNS

    _, report = prune_model(small_cnn(), PruneRequest("magnitude", 0.9), batch=cnn_batch()[0])
    row = report.as_row()
    assert set(row) == set(NUMERIC_COLUMNS) | set(TEXT_COLUMNS)
    for col in ("params_total", "params_nonzero", "effective_sparsity", "flops_dense", "flops_effective"):
        assert col in row
    assert math.isnan(row["semi_structured_flops_share"])


@pytest.mark.parametrize("method", ["snip", "force"])
def test_scoring_leaves_the_batch_norm_statistics_alone(method):
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    prune_model(model, PruneRequest(method, 0.5, force_steps=3), batch=cnn_batch(), loss_fn=F.cross_entropy)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_two_four_bookkeeping_with_the_gpu_checks_faked(monkeypatch):
    """What 2:4 converts and reports, short of the GPU kernels (faked: the masked dense weight stays)."""
    from aipm_fast.prune import semi_structured

    converted = {}
    monkeypatch.setattr(semi_structured, "check_support", lambda layers: None)
    monkeypatch.setattr(semi_structured, "convert", lambda layers, masks, cls: converted.update(masks))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).half()
    x = torch.randn(4, 64).half()
    model, report = prune_model(model, PruneRequest("magnitude", 0.5, "2:4"), batch=x)
    assert set(converted) == {"0", "2"}  # the 10-unit head is no multiple of the backend's 16 rows
    assert "4 (shape 10x64 is not a multiple of 16x16" in report.left_dense
    for name in ("0", "2"):
        weight = model.get_submodule(name).weight.detach()
        assert torch.all((weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2) == 2)
        groups = weight.abs().reshape(weight.shape[0], -1, 4)
        kept_min = groups.where(groups != 0, torch.inf).amin(dim=2)
        assert torch.all(kept_min >= groups.where(groups == 0, -torch.inf).amax(dim=2))  # the larger two of four
    layer_flops = {"0": 2 * 64 * 128, "2": 2 * 128 * 64, "4": 2 * 64 * 10}
    dense = sum(layer_flops.values())
    assert report.flops_dense == dense
    assert report.semi_structured_flops_share == pytest.approx((layer_flops["0"] + layer_flops["2"]) / dense)
    assert report.flops_executed == dense - (layer_flops["0"] + layer_flops["2"]) / 2
    assert report.layers_pruned == 2


class _Attention(nn.Module):
    """One self-attention block as ViT's encoder has it: nn.MultiheadAttention, then a linear."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, 8)

    def forward(self, x):
        return self.out(self.attn(x, x, x, need_weights=False)[0])


def test_flops_count_the_attention_of_multihead_attention_in_eval_mode():
    # in eval mode without gradients nn.MultiheadAttention takes its fused fast path, an operator
    # the FLOP counter does not see: the count must still hold its projections and products
    torch.manual_seed(0)
    model = _Attention().eval()
    tokens, d = 10, 32
    report = prune_model(model, PruneRequest("magnitude", 0.5, "masked"), batch=torch.randn(3, tokens, d))[1]
    projections = 2 * tokens * d * 3 * d + 2 * tokens * d * d  # in_proj (q, k, v) and out_proj
    products = 2 * 2 * tokens * tokens * d  # q k^T and the weighted sum of v, over all heads
    assert report.flops_dense == projections + products + 2 * tokens * d * 8
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is put back
