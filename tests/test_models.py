"""Tests for smoothtopk.models: registry, forward/backward of every model, DenseNet-BC size,
cosine head, bad-input errors. ResNet state-dict compatibility is in test_models_resnet.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smoothtopk.models import (
    MLP,
    MODELS,
    CosineClassifier,
    DenseNetBC,
    SmallCNN,
    build_model,
)

# name, input_shape, kwargs: small inputs so that every case runs in well under a second.
CASES = [
    ("linear", (7,), {}),
    ("linear", (1, 6, 6), {}),
    ("mlp", (7,), {"hidden": (16, 8), "dropout": 0.1}),
    ("small_cnn", (1, 28, 28), {}),
    ("densenet_bc", (3, 32, 32), {"depth": 10, "growth_rate": 4}),
    ("densenet_bc_40_40", (3, 32, 32), {}),
    ("densenet40", (3, 8, 8), {}),
    ("resnet18", (3, 32, 32), {}),
    ("resnet18", (3, 16, 16), {"small_input": True}),
    ("resnet50", (3, 64, 64), {}),
]
# the cosine head is the same module on every model: check it on the cheaper ones
COSINE_CASES = [c for c in CASES if c[0] not in ("densenet_bc_40_40", "densenet40", "resnet50")]



def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_the_required_names() -> None:
    required = {"linear", "mlp", "small_cnn", "densenet_bc_40_40", "densenet40", "resnet18",
                "resnet50"}
    assert required <= set(MODELS)
    assert MODELS["densenet40"] is MODELS["densenet_bc_40_40"]
    assert {name for name, _, _ in CASES} == set(MODELS)  # every entry is exercised below


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "cosine_head"),
    [(*c, False) for c in CASES] + [(*c, True) for c in COSINE_CASES],
)
def test_forward_backward_on_cpu(name, shape, kwargs, cosine_head) -> None:
    torch.manual_seed(0)
    num_classes = 5
    model = build_model(name, num_classes, shape, cosine_head=cosine_head, **kwargs)
    model.train()
    x = torch.randn(2, *shape)
    y = torch.tensor([0, 3])
    out = model(x)
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if cosine_head:
        assert isinstance(model.fc, CosineClassifier)
        assert out.abs().max() <= 1 + 1e-6
        out = 10.0 * out
    nn.functional.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # the head and the first layer both receive a non-zero gradient
    params = list(model.parameters())
    assert params[0].grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)


def test_unknown_model_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'") as err:
        build_model("vgg16", 10, (3, 32, 32))
    for name in ("resnet50", "densenet40", "mlp", "linear", "small_cnn"):
        assert name in str(err.value)
    with pytest.raises(TypeError, match="name must be a str"):
        build_model(None, 10, (3, 32, 32))


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['hiden'\].*'hidden'"):
        build_model("mlp", 10, (4,), hiden=(8,))
    with pytest.raises(TypeError, match="pretrained_weights"):
        build_model("resnet50", 10, (3, 64, 64), pretrained=True)
    with pytest.raises(TypeError, match="accepted: none"):
        build_model("linear", 10, (4,), hidden=(8,))
    with pytest.raises(TypeError, match="cosine_head must be a bool"):
        build_model("linear", 10, (4,), cosine_head=1)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-3, ValueError),
                                            (2.5, TypeError), (True, TypeError)])
@pytest.mark.parametrize("name", ["linear", "small_cnn", "densenet40", "resnet18"])
def test_bad_num_classes(name, value, exc) -> None:
    shape = (4,) if name == "linear" else (3, 32, 32)
    with pytest.raises(exc, match="num_classes"):
        build_model(name, value, shape)


@pytest.mark.parametrize(
    ("name", "shape", "exc", "match"),
    [
        ("linear", (3, 32), ValueError, r"\(d,\) or \(C, H, W\)"),
        ("linear", "abc", TypeError, "input_shape must be a tuple"),
        ("linear", 7, TypeError, "input_shape must be a tuple"),
        ("mlp", (0,), ValueError, "input_shape entries must be >= 1"),
        ("small_cnn", (784,), ValueError, r"\(C, H, W\) for this model"),
        ("small_cnn", (1, 3, 28), ValueError, "H, W >= 4"),
        ("densenet40", (3, 2, 2), ValueError, "H, W >= 4"),
        ("densenet40", (3, 32.0, 32), TypeError, "input_shape entries must be an int"),
        ("resnet50", (2048,), ValueError, r"\(C, H, W\) for this model"),
    ],
)
def test_bad_input_shape(name, shape, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build_model(name, 10, shape)


@pytest.mark.parametrize(
    ("name", "shape", "bad", "match"),
    [
        ("linear", (6,), (2, 5), r"\(N, 6\)"),
        ("linear", (1, 4, 4), (2, 1, 4, 5), r"\(N, 1, 4, 4\)"),
        ("small_cnn", (1, 28, 28), (2, 3, 28, 28), r"\(N, 1, H, W\)"),
        ("small_cnn", (1, 28, 28), (2, 28, 28), r"\(N, 1, H, W\)"),
        ("densenet_bc", (3, 32, 32), (2, 1, 32, 32), r"\(N, 3, H, W\)"),
    ],
)
def test_forward_rejects_wrong_input_shape(name, shape, bad, match) -> None:
    kwargs = {"depth": 10, "growth_rate": 4} if name == "densenet_bc" else {}
    model = build_model(name, 3, shape, **kwargs)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*bad))


def test_conv_models_accept_other_image_sizes() -> None:
    model = build_model("small_cnn", 4, (1, 28, 28)).eval()
    assert model(torch.randn(2, 1, 40, 36)).shape == (2, 4)


# ---------------------------------------------------------------- DenseNet-BC parameter count

def densenet_bc_param_count(depth: int, k: int, num_classes: int, in_channels: int = 3) -> int:
    """Independent count from the architecture of Huang et al. (2017), §3 and Table 2 setting:
    first 3x3 conv to 2k maps; 3 blocks of n = (L-4)/6 layers, each BN + 1x1 conv to 4k maps
    + BN + 3x3 conv to k maps (no biases; BN has 2 parameters per channel); transitions BN +
    1x1 conv to floor(c/2) maps; final BN; linear layer with bias."""
    n = (depth - 4) // 6
    c = 2 * k
    total = in_channels * c * 3 * 3
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 4 * k * k * 3 * 3
            c += k
        if block < 2:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + c * num_classes + num_classes


# Published sizes on CIFAR-10, in millions: Huang et al. 2017 Table 2, and the Wide-DenseNet-BC
# table of the authors' repository (github.com/liuzhuang13/DenseNet, README).
PUBLISHED_DENSENET_BC = [((100, 12), 0.8), ((250, 24), 15.3), ((190, 40), 25.6),
                         ((40, 36), 1.5), ((40, 48), 2.7), ((40, 60), 4.3)]


@pytest.mark.parametrize(("config", "millions"), PUBLISHED_DENSENET_BC)
def test_densenet_bc_formula_matches_published_sizes(config, millions) -> None:
    depth, k = config
    assert round(densenet_bc_param_count(depth, k, 10) / 1e6, 1) == millions


def test_densenet_bc_40_40_parameter_count() -> None:
    model = build_model("densenet_bc_40_40", 100, (3, 32, 32))
    assert densenet_bc_param_count(40, 40, 100) == 1_941_620
    assert n_params(model) == 1_941_620
    assert n_params(build_model("densenet40", 10, (3, 32, 32))) == 1_901_930
    small = DenseNetBC((3, 32, 32), 10, depth=100, growth_rate=12)
    assert n_params(small) == densenet_bc_param_count(100, 12, 10)


def test_densenet_bc_40_40_layout() -> None:
    model = build_model("densenet40", 100, (3, 32, 32)).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # 1 first conv + 3 blocks x 6 layers x 2 convs + 2 transitions; + the linear layer = 40
    assert len(convs) == 1 + 36 + 2
    assert convs[0].out_channels == 80
    assert model.num_features == 440
    shapes = []
    model.norm.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    model(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 440, 8, 8)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"depth": 41}, ValueError, "6n \\+ 4"),
        ({"depth": 4}, ValueError, "depth must be >= 10"),
        ({"growth_rate": 0}, ValueError, "growth_rate"),
        ({"compression": 0.0}, ValueError, "compression"),
        ({"compression": 1.5}, ValueError, "compression"),
        ({"drop_rate": 1.0}, ValueError, "drop_rate"),
        ({"bottleneck_width": 2.0}, TypeError, "bottleneck_width"),
    ],
)
def test_densenet_bad_options(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build_model("densenet_bc", 10, (3, 32, 32), **kwargs)


# -------------------------------------------------------------------------- cosine head

def test_cosine_classifier_matches_brute_force() -> None:
    torch.manual_seed(1)
    head = CosineClassifier(6, 4)
    x = torch.randn(5, 6)
    out = head(x)
    w = head.weight.detach().double()
    for i in range(5):
        for j in range(4):
            xi = x[i].double()
            ref = float(xi @ w[j]) / math.sqrt(float(xi @ xi) * float(w[j] @ w[j]))
            assert out[i, j].item() == pytest.approx(ref, abs=1e-6)
    # invariant to the scale of the features, bounded, and +-1 on (anti-)parallel features
    assert torch.allclose(head(3.7 * x), out, atol=1e-6)
    aligned = head(torch.stack([head.weight[2].detach(), -head.weight[0].detach()]))
    assert aligned[0, 2].item() == pytest.approx(1.0, abs=1e-6)
    assert aligned[1, 0].item() == pytest.approx(-1.0, abs=1e-6)
    assert head(torch.zeros(2, 6)).eq(0).all()


def test_cosine_classifier_bad_input() -> None:
    with pytest.raises(ValueError, match="in_features"):
        CosineClassifier(0, 3)
    with pytest.raises(TypeError, match="num_classes"):
        CosineClassifier(4, 3.0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        CosineClassifier(4, 3)(torch.randn(2, 5))


def test_cosine_head_takes_over_the_linear_weight() -> None:
    torch.manual_seed(3)
    plain = build_model("mlp", 6, (5,), hidden=(8,))
    torch.manual_seed(3)
    cos = build_model("mlp", 6, (5,), hidden=(8,), cosine_head=True)
    assert isinstance(cos.fc, CosineClassifier)
    assert torch.equal(cos.fc.weight, plain.fc.weight)
    assert "fc.bias" not in cos.state_dict()
    assert n_params(cos) == n_params(plain) - 6


# -------------------------------------------------------------------------- MLP / small CNN

def test_linear_and_mlp_sizes() -> None:
    assert n_params(build_model("linear", 10, (64,))) == 64 * 10 + 10
    assert n_params(build_model("linear", 10, (1, 28, 28))) == 784 * 10 + 10
    mlp = build_model("mlp", 10, (64,), hidden=(32,))
    assert n_params(mlp) == 64 * 32 + 32 + 2 * 32 + 32 * 10 + 10
    assert isinstance(mlp, MLP)
    mlp.train()(torch.randn(1, 64)).sum().backward()  # a batch of one sample trains


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"hidden": 32}, TypeError, "hidden must be a sequence"),
        ({"hidden": (32, 0)}, ValueError, "hidden widths"),
        ({"dropout": 1.0}, ValueError, "dropout must be in"),
        ({"dropout": -0.1}, ValueError, "dropout must be in"),
    ],
)
def test_mlp_bad_options(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build_model("mlp", 10, (16,), **kwargs)


def test_small_cnn_width() -> None:
    assert isinstance(build_model("small_cnn", 10, (1, 28, 28)), SmallCNN)
    assert build_model("small_cnn", 10, (1, 28, 28), width=8).num_features == 32
    with pytest.raises(ValueError, match="width"):
        build_model("small_cnn", 10, (1, 28, 28), width=0)
