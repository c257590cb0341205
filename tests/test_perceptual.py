"""Perceptual backbones: torchvision key mapping, LPIPS' formula, missing-weight behaviour, the fallback.

Checkpoints here are fake (random tensors with torchvision's keys and shapes): they verify the key mapping
and the computations only. Values computed with them are never reported anywhere else.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from harp_kaolin import perceptual as P

ATOL = 1e-10  # module vs functional twin, float64
FEATURE_RTOL = 1e-9
LPIPS_RTOL = 1e-6  # ours vs the lpips package's own code, float32

# torchvision alexnet().features: (index, out channels, in channels, kernel, stride, padding)
ALEX_CONVS = [(0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1), (8, 256, 384, 3, 1, 1)]
ALEX_CONVS += [(10, 256, 256, 3, 1, 1)]
# torchvision vgg16().features: conv indices and channels (3x3, padding 1)
VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256)]
VGG_CONVS += [(14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512)]
VGG_CONVS += [(26, 512, 512), (28, 512, 512)]


def _fake_state(convs) -> dict[str, torch.Tensor]:
    """Random torchvision-format state dict (He-scaled so activations stay in range), plus a classifier."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for idx, c_out, c_in, k in convs:
        state[f"features.{idx}.weight"] = (
            torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5
        )
        state[f"features.{idx}.bias"] = 0.01 * torch.randn(c_out, generator=g)
    state["classifier.1.weight"] = torch.randn(4, 8, generator=g)  # ignored by the features loader
    return state


@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("alex") / P.ALEXNET_CHECKPOINT
    state = _fake_state([(i, o, c, k) for i, o, c, k, _, _ in ALEX_CONVS])
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def fake_vgg(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / P.VGG16_CHECKPOINT
    state = _fake_state([(i, c_in, c_out, 3) for i, c_out, c_in in VGG_CONVS])
    torch.save(state, path)
    return path, state


def _alex_taps(x, state):
    """Functional twin of lpips' AlexNet slices: the 5 ReLU outputs."""
    taps, h = [], x
    for n, (idx, _, _, _, stride, pad) in enumerate(ALEX_CONVS):
        if n in (1, 2):
            h = F.max_pool2d(h, kernel_size=3, stride=2)
        w, b = state[f"features.{idx}.weight"].double(), state[f"features.{idx}.bias"].double()
        h = F.relu(F.conv2d(h, w, b, stride=stride, padding=pad))
        taps.append(h)
    return taps


def _vgg_taps(x, state):
    """Functional twin of VGG16 up to relu4_3: relu1_2, relu2_2, relu3_3, relu4_3."""
    taps, h = [], x
    for idx, _, _ in VGG_CONVS[:10]:
        if idx in (5, 10, 17):
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        w, b = state[f"features.{idx}.weight"].double(), state[f"features.{idx}.bias"].double()
        h = F.relu(F.conv2d(h, w, b, padding=1))
        if idx in (2, 7, 14, 21):
            taps.append(h)
    return taps


# ------------------------------------------------------------------------------------------- lpips files
def test_lpips_linear_weights_come_from_the_package_file():
    path = P.lpips_weights_file("alex")
    assert path is not None and path.parts[-3:] == ("weights", "v0.1", "alex.pth")
    lins = P.load_lpips_linear_weights("alex")
    assert [tuple(w.shape) for w in lins] == [(1, c, 1, 1) for c in (64, 192, 384, 256, 256)]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(lins[2], raw["lin2.model.1.weight"])
    assert "lpips" not in sys.modules and "torchvision" not in sys.modules  # located, never imported


# ------------------------------------------------------------------------------------------- missing weights
def test_backbones_are_none_with_a_reason_when_weights_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, note = P.load_lpips()
    assert model is None and P.ALEXNET_CHECKPOINT in note and str(tmp_path) in note
    vgg, note = P.load_vgg(tmp_path / "nowhere.pth")
    assert vgg is None and P.VGG16_CHECKPOINT in note and "nowhere.pth" in note and str(tmp_path) in note


def test_fallback_to_ms_ssim_is_announced_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(P, "_ANNOUNCED", set())
    with pytest.warns(P.PerceptualFallbackWarning, match="vgg16-397923af.pth") as record:
        fn, mode = P.perceptual_loss_fn("auto")
    assert mode == "ms-ssim" and str(tmp_path / "hub" / "checkpoints") in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.perceptual_loss_fn("auto")[1] == "ms-ssim"  # no second announcement
    x = torch.rand(2, 3, 40, 40)
    assert fn(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        P.perceptual_loss_fn("vgg16")
    with pytest.raises(ValueError, match="mode must be"):
        P.perceptual_loss_fn("vgg19")


def test_ms_ssim_loss_is_differentiable():
    y = torch.rand(1, 3, 48, 48)
    x = (y + 0.1 * torch.rand_like(y)).clamp(0, 1).requires_grad_(True)
    loss = P.ms_ssim_loss(x, y)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------- key mapping
def test_alexnet_loads_torchvision_keys_and_matches_functional_twin(fake_alexnet):
    path, state = fake_alexnet
    net = P.AlexNetFeatures()
    P.load_torchvision_features(net, path)
    net = net.double()
    x = torch.randn(2, 3, 64, 72, dtype=torch.float64)
    for got, want in zip(net(x), _alex_taps(x, state), strict=True):
        torch.testing.assert_close(got, want, rtol=FEATURE_RTOL, atol=ATOL)


def test_lpips_formula_with_fake_backbone(fake_alexnet, monkeypatch, tmp_path):
    path, state = fake_alexnet
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the explicit folder must be used
    model, note = P.load_lpips(path.parent)
    assert model is not None and str(path) in note
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    lins = torch.load(P.lpips_weights_file("alex"), map_location="cpu", weights_only=True)
    # lpips' constants, rounded to float32 as the module's buffers are
    shift = torch.tensor([-0.030, -0.088, -0.188]).double()[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450]).double()[None, :, None, None]
    want = 0
    for k, (a, b) in enumerate(
        zip(_alex_taps((x - shift) / scale, state), _alex_taps((y - shift) / scale, state))
    ):
        a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].double()
        want = want + ((a - b).square() * w).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(model(x, y), want, rtol=FEATURE_RTOL, atol=ATOL)
    torch.testing.assert_close(
        model((x + 1) / 2, (y + 1) / 2, normalize=True), want, rtol=FEATURE_RTOL, atol=ATOL
    )
    assert model(x, x).abs().max().item() == 0.0


def test_lpips_matches_the_lpips_package_code(fake_alexnet, monkeypatch):
    """Run lpips' own LPIPS class, with a stub torchvision whose alexnet() is ours with the fake weights."""
    path, _ = fake_alexnet
    trunk = P.AlexNetFeatures()
    P.load_torchvision_features(trunk, path)
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda pretrained=False: trunk
    tv = types.ModuleType("torchvision")
    tv.models = models
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    try:
        import lpips

        reference = lpips.LPIPS(net="alex", version="0.1", verbose=False)
    finally:
        for name in set(sys.modules) - before - {"torchvision", "torchvision.models"}:
            del sys.modules[name]  # leave no lpips modules behind
    model, _ = P.load_lpips(path)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 96, 80, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), reference(x, y).flatten(), rtol=LPIPS_RTOL, atol=0)
        want = reference((x + 1) / 2, (y + 1) / 2, normalize=True).flatten()
        torch.testing.assert_close(
            model((x + 1) / 2, (y + 1) / 2, normalize=True), want, rtol=LPIPS_RTOL, atol=0
        )


def test_vgg_loads_torchvision_keys_and_loss_matches_functional_twin(fake_vgg, tmp_path, monkeypatch):
    path, state = fake_vgg
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / P.VGG16_CHECKPOINT).symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loss_fn, mode = P.perceptual_loss_fn("auto")  # found in the hub cache
    assert mode == "vgg16" and isinstance(loss_fn, P.VGGPerceptualLoss)
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2, 3, 32, 40, generator=g, dtype=torch.float64)
    x = (y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)).clamp(0, 1).requires_grad_(True)
    mean = torch.tensor(P.IMAGENET_MEAN).double()[None, :, None, None]  # float32 buffers, as the module's
    std = torch.tensor(P.IMAGENET_STD).double()[None, :, None, None]
    fx, fy = _vgg_taps((x - mean) / std, state), _vgg_taps((y - mean) / std, state)
    got = loss_fn(x, y)
    for a, b in zip(loss_fn.net((x - mean) / std), fx, strict=True):
        torch.testing.assert_close(a, b, rtol=FEATURE_RTOL, atol=ATOL)
    want = sum((a - b).abs().mean() for a, b in zip(fx, fy))
    torch.testing.assert_close(got, want, rtol=FEATURE_RTOL, atol=ATOL)
    got.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss_fn.parameters())
    assert loss_fn(y, y).item() == 0.0


def test_checkpoint_of_another_network_is_refused(fake_alexnet):
    path, _ = fake_alexnet
    vgg, note = P.load_vgg(path)  # an AlexNet file given as the VGG16 checkpoint
    assert vgg is None and "could not load" in note and "VGG16Features" in note
