"""Tests of the ``aipm-fast bench`` model zoo (CPU, small sizes)."""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys

import pytest
import torch

from aipm_fast.bench import models as M
from aipm_fast.bench.models import (
    MODELS,
    MissingExtraError,
    WeightsLoadError,
    build_model,
    forward,
    list_models,
    make_inputs,
    parse_sizes,
    validate_size,
)

# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------


def test_zoo_contents():
    assert list(MODELS) == ["alexnet", "resnet18", "resnet50", "vit_b_16", "yolov5s", "bert", "lenet5_caffe", "vgg_d"]
    batch = {name: spec.default_batch_size for name, spec in MODELS.items()}
    assert batch == {
        "alexnet": 1,
        "resnet18": 1,
        "resnet50": 128,
        "vit_b_16": 64,
        "yolov5s": 32,
        "bert": 128,
        "lenet5_caffe": 100,
        "vgg_d": 128,
    }
    assert {name: spec.requires for name, spec in MODELS.items()} == {
        "alexnet": None,
        "resnet18": None,
        "resnet50": None,
        "vit_b_16": None,
        "yolov5s": None,  # built natively, no extra
        "bert": "text",
        "lenet5_caffe": None,
        "vgg_d": None,
    }
    assert MODELS["bert"].input_kind == "tokens"
    assert MODELS["bert"].max_size == 512
    assert MODELS["vit_b_16"].size_multiple == 16
    assert MODELS["yolov5s"].native_size == 640
    for name, spec in MODELS.items():
        assert spec.name == name
        validate_size(name, spec.native_size)


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODELS["resnet18"].native_size = 32


def test_list_models_rows():
    rows = list_models()
    assert [r.name for r in rows] == list(MODELS)
    by_name = {r.name: r for r in rows}
    assert tuple(by_name["resnet50"]) == ("resnet50", "image", 224, 128, None, True)
    assert by_name["bert"].input_kind == "tokens"
    assert by_name["bert"].requires == "text"
    assert by_name["yolov5s"].requires is None
    assert by_name["yolov5s"].available is True
    for r in rows:
        assert isinstance(r.available, bool)


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'vgg16'.*resnet50"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="unknown model"):
        validate_size("vgg16", 224)


# --------------------------------------------------------------------------
# torchvision models
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, batch",
    [("alexnet", 64, 2), ("resnet18", 32, 2), ("resnet50", 32, 1), ("vit_b_16", 32, 1)],
)
def test_torchvision_forward(name, size, batch):
    model = build_model(name, size=size)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    x = make_inputs(name, size, batch)
    assert x.shape == (batch, 3, size, size)
    out = forward(model, x)
    assert out.shape == (batch, 1000)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_vit_is_built_for_the_size():
    model = build_model("vit_b_16", size=32)
    assert model.image_size == 32
    # (32 / 16)^2 patches + the class token
    assert model.encoder.pos_embedding.shape == (1, 5, 768)


def test_only_models_whose_architecture_depends_on_the_size_are_rebuilt_per_size():
    assert {name for name, spec in MODELS.items() if spec.rebuild_per_size} == {"vit_b_16"}


def test_vit_weights_of_another_size_say_why(tmp_path):
    path = tmp_path / "vit32.pt"
    torch.save(build_model("vit_b_16", size=32).state_dict(), path)
    with pytest.raises(WeightsLoadError, match=r"encoder\.pos_embedding.*depends on the image size.*built for 48"):
        build_model("vit_b_16", size=48, weights_path=path)


def test_a_spec_needs_its_familys_functions():
    with pytest.raises(ValueError, match="builder and inputs"):
        M.ModelSpec(name="x", input_kind="image", native_size=8, default_batch_size=1, description="")


def test_build_validates_size():
    with pytest.raises(ValueError, match=r"vit_b_16.*\b40\b.*multiple of 16"):
        build_model("vit_b_16", size=40)


def test_image_inputs_are_seeded_noise():
    a = make_inputs("resnet18", 16, 2)
    b = make_inputs("resnet18", 16, 2)
    assert torch.equal(a, b)
    assert a.dtype == torch.float32
    assert a.std() > 0.5
    h = make_inputs("resnet18", 16, 1, dtype=torch.bfloat16)
    assert h.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="floating-point"):
        make_inputs("resnet18", 16, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="batch size"):
        make_inputs("resnet18", 16, 0)
    with pytest.raises(ValueError, match=r"alexnet.*\b62\b.*at least 63"):
        make_inputs("alexnet", 62, 1)


def test_build_with_dtype():
    model = build_model("resnet18", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = forward(model, make_inputs("resnet18", 32, 1, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


# --------------------------------------------------------------------------
# forward()
# --------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    def forward(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.inference_mode = torch.is_inference_mode_enabled()
        return "out"


def test_forward_calls_model_the_right_way():
    rec = _Recorder()
    x = torch.zeros(1)
    assert forward(rec, x) == "out"
    assert rec.args == (x,) and rec.kwargs == {}
    assert rec.inference_mode
    inputs = {"input_ids": torch.zeros(1, 2), "attention_mask": torch.ones(1, 2)}
    forward(rec, inputs)
    assert rec.args == () and set(rec.kwargs) == {"input_ids", "attention_mask"}
    assert rec.inference_mode


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


def test_parse_sizes_default_is_native():
    assert parse_sizes(None, MODELS["resnet50"]) == [224]
    assert parse_sizes(None, MODELS["yolov5s"]) == [640]
    assert parse_sizes(None, MODELS["bert"]) == [512]


def test_parse_sizes_lists_and_ranges():
    spec = MODELS["resnet50"]
    assert parse_sizes("112,224", spec) == [112, 224]
    assert parse_sizes(" 112 , 224 ", spec) == [112, 224]
    assert parse_sizes("224", spec) == [224]
    sizes = parse_sizes("112:2240:112", spec)
    assert len(sizes) == 20
    assert sizes[0] == 112 and sizes[-1] == 2240
    assert sizes == [112 * k for k in range(1, 21)]
    assert parse_sizes("100:250:100", spec) == [100, 200]  # 300 overshoots the stop
    assert parse_sizes("64:64:1", spec) == [64]
    assert parse_sizes("32,64:128:32", spec) == [32, 64, 96, 128]
    bert = parse_sizes("50:500:50", MODELS["bert"])
    assert bert == [50, 100, 150, 200, 250, 300, 350, 400, 450, 500]


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "no size"),
        ("   ", "no size"),
        ("abc", "not a non-negative integer"),
        ("112,,224", "empty item"),
        ("112,", "empty item"),
        ("-5", "not a non-negative integer"),
        ("1.5", "not a non-negative integer"),
        ("112:224", "not start:stop:step"),
        ("1:2:3:4", "not start:stop:step"),
        ("224:112:16", "stop < start"),
        ("112:224:0", "zero step"),
        ("112:x:16", "not a non-negative integer"),
        ("1:1000000000000:1", "more than 256 sizes"),  # refused without building the range
        (",".join(["224"] * 257), "more than 256 sizes"),
    ],
)
def test_parse_sizes_errors(text, why):
    with pytest.raises(ValueError) as info:
        parse_sizes(text, MODELS["resnet50"])
    message = str(info.value)
    assert repr(text) in message
    assert why in message


def test_parse_sizes_checks_model_constraints():
    with pytest.raises(ValueError) as info:
        parse_sizes("224,100", MODELS["vit_b_16"])
    message = str(info.value)
    assert "'224,100'" in message and "vit_b_16" in message and "100" in message
    assert "multiple of 16" in message
    with pytest.raises(ValueError, match=r"'400:600:100'.*bert.*600.*between 2 and 512"):
        parse_sizes("400:600:100", MODELS["bert"])
    with pytest.raises(ValueError, match=r"alexnet.*\b0\b"):
        parse_sizes("0,224", MODELS["alexnet"])


def test_validate_size():
    assert validate_size("vit_b_16", 224) == 224
    assert validate_size("resnet18", 1) == 1
    assert validate_size("bert", 512) == 512
    cases = [
        ("vit_b_16", 100, "multiple of 16"),
        ("vit_b_16", 0, "at least 16"),
        ("alexnet", 62, "at least 63"),
        ("yolov5s", 100, "multiple of 32"),
        ("bert", 513, "between 2 and 512"),
        ("bert", 1, "between 2 and 512"),
        ("resnet18", 0, "at least 1"),
    ]
    for name, size, allowed in cases:
        with pytest.raises(ValueError) as info:
            validate_size(name, size)
        message = str(info.value)
        assert name in message and str(size) in message and allowed in message
    for bad in (224.0, "224", True, None):
        with pytest.raises(ValueError, match="not an integer"):
            validate_size("resnet18", bad)


# --------------------------------------------------------------------------
# weights files
# --------------------------------------------------------------------------


def test_weights_round_trip(tmp_path):
    torch.manual_seed(123)
    source = build_model("resnet18")
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    loaded = build_model("resnet18", weights_path=path)
    assert not loaded.training
    src_state, new_state = source.state_dict(), loaded.state_dict()
    assert src_state.keys() == new_state.keys()
    for key, value in src_state.items():
        assert torch.equal(value, new_state[key]), key
    # str paths, and the common checkpoint wrappers, work too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src_state.items()}}, wrapped)
    again = build_model("resnet18", weights_path=str(wrapped))
    assert torch.equal(again.fc.weight, source.fc.weight)


def test_weights_mismatch_names_file_and_keys(tmp_path):
    state = build_model("resnet18").state_dict()
    del state["fc.weight"]
    state["head.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(1, 2, 3)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(WeightsLoadError) as info:
        build_model("resnet18", weights_path=path)
    message = str(info.value)
    assert str(path) in message
    assert "'resnet18'" in message
    assert "fc.weight" in message  # missing
    assert "head.weight" in message  # unexpected
    assert "conv1.weight" in message  # wrong shape


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "alexnet.pt"
    torch.save(build_model("alexnet").state_dict(), path)
    with pytest.raises(WeightsLoadError, match=re.escape(str(path)) + r".*missing key.*more"):
        build_model("resnet18", weights_path=path)


def test_weights_missing_or_unreadable(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsLoadError, match=re.escape(str(missing)) + ".*does not exist"):
        build_model("resnet18", weights_path=missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsLoadError, match=re.escape(str(garbage))):
        build_model("resnet18", weights_path=garbage)
    not_a_state_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_state_dict)
    with pytest.raises(WeightsLoadError, match=re.escape(str(not_a_state_dict)) + ".*state dict"):
        build_model("resnet18", weights_path=not_a_state_dict)
    with pytest.raises(WeightsLoadError, match="not a file"):
        build_model("resnet18", weights_path=tmp_path)


# --------------------------------------------------------------------------
# optional extras
# --------------------------------------------------------------------------


def test_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes "import transformers" fail
    with pytest.raises(MissingExtraError) as info:
        build_model("bert")
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.extra == "text" and err.package == "transformers"
    assert "pip install 'aipm-fast[text]'" in str(err)
    assert "transformers" in str(err) and "bert" in str(err)
    assert "not installed" in str(err)
    assert {r.name: r.available for r in list_models()}["bert"] is False


def test_broken_extra_is_reported(monkeypatch):
    real_import = importlib.import_module

    def fake_import(module, *args, **kwargs):
        if module == "transformers":
            raise ImportError("libtorch_cuda.so: cannot open shared object file")
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(M.importlib, "import_module", fake_import)
    with pytest.raises(MissingExtraError) as info:
        build_model("bert")
    message = str(info.value)
    assert "libtorch_cuda.so" in message
    assert "pip install 'aipm-fast[text]'" in message


# --------------------------------------------------------------------------
# bert (transformers)
# --------------------------------------------------------------------------


def test_bert_inputs_without_transformers():
    inputs = make_inputs("bert", 8, 3, dtype=torch.float16)
    assert set(inputs) == {"input_ids", "attention_mask"}
    expected = torch.tensor([[101, 2748, 2748, 2748, 2748, 2748, 2748, 102]] * 3)
    assert inputs["input_ids"].dtype == torch.int64
    assert torch.equal(inputs["input_ids"], expected)
    assert inputs["attention_mask"].dtype == torch.int64
    assert torch.equal(inputs["attention_mask"], torch.ones(3, 8, dtype=torch.int64))
    two = make_inputs("bert", 2, 1)["input_ids"]
    assert two.tolist() == [[101, 102]]
    with pytest.raises(ValueError, match=r"bert.*\b513\b.*between 2 and 512"):
        make_inputs("bert", 513, 1)


def test_bert_forward():
    pytest.importorskip("transformers")
    model = build_model("bert")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
    assert (config.vocab_size, config.max_position_embeddings) == (30522, 512)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not model.training
    inputs = make_inputs("bert", 8, 2)
    out = forward(model, inputs)
    assert out.logits.shape == (2, 2)
    assert torch.isfinite(out.logits).all()


# --------------------------------------------------------------------------
# yolov5s (built natively)
# --------------------------------------------------------------------------

_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


def test_yolov5_head_decoding():
    head = M.YOLOv5Detect(80, _ANCHORS, (4, 4, 4), (8, 16, 32)).eval()
    with torch.no_grad():
        for conv in head.m:
            conv.weight.zero_()
            conv.bias.zero_()
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)]
    pred, raw = forward(head, feats)
    assert pred.shape == (1, 3 * (64 + 16 + 4), 85)
    assert [tuple(r.shape) for r in raw] == [(1, 3, 8, 8, 85), (1, 3, 4, 4, 85), (1, 3, 2, 2, 85)]
    # zero logits: sigmoid 0.5 -> boxes centred on their cells, sized as their anchors
    first = pred[0, :64].view(8, 8, 85)  # anchor 0 of the stride-8 level
    assert torch.allclose(first[0, 0, :4], torch.tensor([4.0, 4.0, 10.0, 13.0]))
    assert torch.allclose(first[2, 5, :4], torch.tensor([44.0, 20.0, 10.0, 13.0]))
    assert torch.allclose(pred[0, -1, :4], torch.tensor([48.0, 48.0, 373.0, 326.0]))
    assert torch.allclose(pred[..., 4:], torch.full_like(pred[..., 4:], 0.5))
    assert set(head.state_dict()) == {"anchors"} | {f"m.{i}.{p}" for i in range(3) for p in ("weight", "bias")}


def _cells(size: int) -> int:
    return sum((size // stride) ** 2 for stride in (8, 16, 32))


def test_yolov5s_parameters():
    model = build_model("yolov5s", size=64)
    assert not model.training
    bn_features = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    params = sum(p.numel() for p in model.parameters())
    assert params == 7_235_389  # YOLOv5s v6.0, 80 classes, as trained (BatchNorm apart)
    # YOLOv5's published 7,225,885 is the count once each BatchNorm is folded into its convolution
    # (its scale and shift become the convolution's bias: one parameter less per feature)
    assert params - bn_features == 7_225_885


def test_yolov5s_gflops_at_640():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("yolov5s", size=64)
    with FlopCounterMode(display=False) as counter:
        forward(model, make_inputs("yolov5s", 64, 1))
    # Every feature map is the input over its stride, so the count scales with the image's area
    # (YOLOv5 profiles a small image and scales it so too). YOLOv5 gives 16.4 GFLOPs at 640 for
    # its fused model: the convolutions alone, which is what FlopCounterMode counts.
    assert round(counter.get_total_flops() * (640 / 64) ** 2 / 1e9, 1) == 16.4


def test_yolov5s_layout_is_yolov5s():
    """The names and shapes YOLOv5's state dicts have, so that its weights load unchanged."""
    state = build_model("yolov5s", size=64).state_dict()
    assert len(state) == 349
    assert {int(k.split(".")[1]) for k in state} == set(range(25)) - {11, 12, 15, 16, 19, 22}  # no weights
    shapes = {
        "model.0.conv.weight": (32, 3, 6, 6),  # the 6x6 stride-2 stem of v6.0
        "model.0.bn.running_var": (32,),
        "model.2.m.0.cv1.conv.weight": (32, 32, 1, 1),
        "model.6.m.2.cv2.conv.weight": (128, 128, 3, 3),  # 9 bottlenecks x depth 0.33 = 3
        "model.9.cv1.conv.weight": (256, 512, 1, 1),  # SPPF
        "model.9.cv2.conv.weight": (512, 1024, 1, 1),
        "model.13.cv1.conv.weight": (128, 512, 1, 1),  # after Concat of layers 11 and 6
        "model.23.cv3.conv.weight": (512, 512, 1, 1),
        "model.24.m.0.weight": (255, 128, 1, 1),
        "model.24.m.2.bias": (255,),
        "model.24.anchors": (3, 3, 2),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "model.6.m.3.cv1.conv.weight" not in state
    p5_anchors_px = torch.tensor([[116.0, 90.0], [156.0, 198.0], [373.0, 326.0]])
    assert torch.equal(state["model.24.anchors"][2], p5_anchors_px / 32)  # in grid units, as YOLOv5 keeps them


@pytest.mark.parametrize("size", [32, 96, 256])
def test_yolov5s_output_shapes(size):
    model = build_model("yolov5s", size=size)
    pred, raw = forward(model, make_inputs("yolov5s", size, 2))
    assert pred.shape == (2, 3 * _cells(size), 85)
    assert [tuple(r.shape) for r in raw] == [(2, 3, size // s, size // s, 85) for s in (8, 16, 32)]
    assert torch.isfinite(pred).all()


def test_yolov5s_refuses_a_size_not_a_multiple_of_32():
    for call in (lambda: build_model("yolov5s", size=100), lambda: make_inputs("yolov5s", 100, 1)):
        with pytest.raises(ValueError, match=r"yolov5s.*\b100\b.*multiple of 32"):
            call()


def test_yolov5s_loads_a_yolov5_state_dict(tmp_path):
    source = build_model("yolov5s", size=64)
    path = tmp_path / "yolov5s.pt"
    torch.save({"model_state_dict": source.state_dict()}, path)
    loaded = build_model("yolov5s", size=64, weights_path=path)
    x = make_inputs("yolov5s", 64, 1)
    assert torch.equal(forward(loaded, x)[0], forward(source, x)[0])
    wrong = {k: v for k, v in source.state_dict().items() if not k.startswith("model.24.m.")}
    wrong.update({f"model.24.m.{i}.weight": torch.zeros(18, c, 1, 1) for i, c in enumerate((128, 256, 512))})
    wrong.update({f"model.24.m.{i}.bias": torch.zeros(18) for i in range(3)})  # a 1-class head
    torch.save(wrong, path)
    with pytest.raises(WeightsLoadError, match=r"yolov5s.*model\.24\.m\.0\.weight \(file \(18, 128, 1, 1\)"):
        build_model("yolov5s", size=64, weights_path=path)
