"""ResNet-18/50: torchvision-compatible state dicts, published sizes, loading local weights."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from smoothtopk.models import CosineClassifier, ResNet, build_model, load_torchvision_weights

LISTING = Path(__file__).parent / "data" / "torchvision_resnet50_state_dict.md"
ROW = re.compile(r"\| `([\w.]+)` \| `\(([\d, ]*)\)` \| ([\d,]+) \|")



def read_listing() -> list[tuple[str, tuple[int, ...], int]]:
    rows = []
    for line in LISTING.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = ROW.fullmatch(line)
        assert match, line
        key, shape, count = match.groups()
        dims = tuple(int(d) for d in shape.split(",") if d.strip())
        rows.append((key, dims, int(count.replace(",", ""))))
    return rows


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_listing_is_consistent_with_its_source_summary() -> None:
    rows = read_listing()
    # the source states 320 tensors and 23,565,303 elements
    assert len(rows) == 320
    assert sum(count for _, _, count in rows) == 23_565_303
    assert all(math.prod(shape) == count for _, shape, count in rows)


def test_resnet50_state_dict_equals_torchvision_listing() -> None:
    expected = [(key, shape) for key, shape, _ in read_listing()]
    model = build_model("resnet50", 2, (3, 224, 224))
    got = [(key, tuple(t.shape)) for key, t in model.state_dict().items()]
    assert got == expected  # same keys, same shapes, same order


def test_published_parameter_counts() -> None:
    # torchvision's num_params for ResNet50_Weights.IMAGENET1K_V1 / ResNet18_Weights.IMAGENET1K_V1
    assert n_params(build_model("resnet50", 1000, (3, 224, 224))) == 25_557_032
    assert n_params(build_model("resnet18", 1000, (3, 224, 224))) == 11_689_512


def test_resnet50_strides_follow_torchvision_v1_5() -> None:
    model = build_model("resnet50", 10, (3, 224, 224))
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.downsample[0].stride == (2, 2)
    assert model.conv1.stride == (2, 2) and model.conv1.padding == (3, 3)
    shapes = []
    model.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    model.eval()(torch.randn(1, 3, 224, 224))
    assert shapes == [(7, 7)]


def test_resnet18_key_structure() -> None:
    keys = build_model("resnet18", 10, (3, 224, 224)).state_dict().keys()
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in keys if k.startswith("layer")}
    assert blocks == {f"layer{i}.{j}" for i in range(1, 5) for j in range(2)}
    downsample = {k.rsplit(".", 2)[0] for k in keys if ".downsample." in k}
    assert downsample == {"layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"}
    assert "layer1.0.conv3.weight" not in keys  # basic blocks, not bottlenecks


def test_small_input_stem_only_changes_conv1() -> None:
    std = build_model("resnet50", 10, (3, 32, 32)).state_dict()
    small = build_model("resnet50", 10, (3, 32, 32), small_input=True)
    sd = small.state_dict()
    assert list(sd) == list(std)
    diff = [k for k in sd if sd[k].shape != std[k].shape]
    assert diff == ["conv1.weight"]
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 3)
    # 32x32 input: the small stem keeps a 4x4 map at layer4, the ImageNet stem a 1x1 map
    shapes = []
    small.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    small.eval()(torch.randn(1, 3, 32, 32))
    assert shapes == [(4, 4)]


def test_bad_options() -> None:
    with pytest.raises(TypeError, match="small_input must be a bool"):
        build_model("resnet18", 10, (3, 32, 32), small_input="yes")
    with pytest.raises(ValueError, match="arch must be one of"):
        ResNet((3, 32, 32), 10, arch="resnet34")


# ------------------------------------------------------------------- pretrained_weights

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A resnet18 state dict with a 1000-class head, as torchvision saves it."""
    torch.manual_seed(0)
    model = build_model("resnet18", 1000, (3, 224, 224))
    for buf in model.buffers():  # make the BN statistics non-default so loading shows
        buf.add_(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def test_load_roundtrip(weights_file) -> None:
    state = torch.load(weights_file, weights_only=True)
    model = build_model("resnet18", 1000, (3, 64, 64), pretrained_weights=str(weights_file))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_load_with_other_number_of_classes_keeps_fresh_head(weights_file) -> None:
    state = torch.load(weights_file, weights_only=True)
    with pytest.warns(UserWarning, match="head for 1000 classes, the model has 7"):
        model = build_model("resnet18", 7, (3, 64, 64), pretrained_weights=weights_file)
    own = model.state_dict()
    for key, value in own.items():
        if key.startswith("fc."):
            assert value.shape[0] == 7
        else:
            assert torch.equal(value, state[key]), key


def test_cosine_head_reuses_pretrained_class_weights(weights_file) -> None:
    state = torch.load(weights_file, weights_only=True)
    model = build_model("resnet18", 1000, (3, 64, 64), cosine_head=True,
                        pretrained_weights=weights_file)
    assert isinstance(model.fc, CosineClassifier)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert "fc.bias" not in model.state_dict()
    assert torch.equal(model.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])


def test_small_input_loads_all_but_conv1(weights_file) -> None:
    state = torch.load(weights_file, weights_only=True)
    model = build_model("resnet18", 1000, (3, 32, 32), small_input=True,
                        pretrained_weights=weights_file)
    own = model.state_dict()
    assert tuple(own["conv1.weight"].shape) == (64, 3, 3, 3)
    assert all(torch.equal(own[k], state[k]) for k in own if k != "conv1.weight")


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_mismatched_keys_are_clear_errors(weights_file, tmp_path) -> None:
    state = torch.load(weights_file, weights_only=True)
    missing = dict(state)
    del missing["layer2.1.bn1.running_mean"]
    with pytest.raises(ValueError, match=r"missing \[layer2\.1\.bn1\.running_mean\]"):
        build_model("resnet18", 1000, (3, 32, 32),
                    pretrained_weights=_save(missing, tmp_path / "m.pth"))
    extra = dict(state, **{"head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected \[head\.weight\]"):
        build_model("resnet18", 1000, (3, 32, 32),
                    pretrained_weights=_save(extra, tmp_path / "e.pth"))
    wrapped = {f"module.{k}": v for k, v in state.items()}
    with pytest.raises(ValueError, match="strip that DataParallel prefix"):
        build_model("resnet18", 1000, (3, 32, 32),
                    pretrained_weights=_save(wrapped, tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="resnet50 keys"):
        build_model("resnet50", 1000, (3, 32, 32), pretrained_weights=weights_file)


def test_wrong_shapes_and_bad_files(weights_file, tmp_path) -> None:
    state = torch.load(weights_file, weights_only=True)
    bad = dict(state, **{"layer1.0.bn1.weight": torch.ones(32)})
    with pytest.raises(ValueError, match=r"layer1\.0\.bn1\.weight \(32,\) \(model \(64,\)\)"):
        build_model("resnet18", 1000, (3, 32, 32),
                    pretrained_weights=_save(bad, tmp_path / "s.pth"))
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 3, 7, 7\) \(model \(64, 1, 7, 7\)"):
        build_model("resnet18", 1000, (1, 32, 32), pretrained_weights=weights_file)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        build_model("resnet18", 10, (3, 32, 32), pretrained_weights=tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="must hold a state dict"):
        build_model("resnet18", 10, (3, 32, 32),
                    pretrained_weights=_save([1, 2], tmp_path / "list.pth"))
    with pytest.raises(TypeError, match="pretrained_weights must be a path"):
        build_model("resnet18", 10, (3, 32, 32), pretrained_weights=3)
    with pytest.raises(TypeError, match="model must be a ResNet"):
        load_torchvision_weights(build_model("linear", 3, (4,)), weights_file)
