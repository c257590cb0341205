"""The fused per-pixel op (warp_kernels.pipeline) vs the separate Warp ops it strings together, whose
kernels it runs: interpolate -> project_points -> pcf_visibility -> fused_shade -> composite (each of
those is tested against its pure-torch twin elsewhere)."""

from __future__ import annotations

import pytest
import torch

from harp_kaolin.render.renderer import covered_pixels, surface_frames
from tests.conftest import DEVICES
from tests.test_fused_shading import scene
from warp_kernels import parallel
from warp_kernels.interpolate import interpolate
from warp_kernels.pipeline import render_pixels
from warp_kernels.shading import composite, fused_shade
from warp_kernels.shadow import pcf_visibility, project_points

SIZE = 8  # shadow-map texels per side
SHARPNESS, BIAS = 20.0, 0.005  # a soft sigmoid: every tap has a gradient
BACKGROUND = (0.2, 0.5, 0.9)
NAMES = ("bary", "vertices", "normals", "tangents", "albedo", "normal_map", "light", "ambient", "mask")
NAMES += ("depth_map", "rotation", "eye")


def inputs(device, dtype=torch.float32, **scene_args):
    """Leaves of every differentiable input, the fixed topology and the light views' focal lengths."""
    s, topo = scene(device, dtype=dtype, **scene_args)
    g = torch.Generator().manual_seed(3)
    b = s["vertices"].shape[0]
    flat, batch_index = covered_pixels(s["face_idx"])
    t = topo
    frames = surface_frames(
        s["vertices"], t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"]
    )
    # a light view ~1 m behind the grid (z ~ 1), looking down +z, tilted: depths ~2, texels ~ +-3
    tilt = torch.eye(3) + 0.1 * torch.randn(b, 3, 3, generator=g)
    values = {
        "bary": s["bary"].reshape(-1, 3)[flat],
        "vertices": s["vertices"],
        "normals": frames.normals,
        "tangents": frames.tangents,
        "albedo": s["albedo"],
        "normal_map": s["normal_map"],
        "light": s["light"],
        "ambient": s["ambient"],
        "mask": torch.rand(s["face_idx"].shape, generator=g),
        "depth_map": 2.0 + 0.05 * torch.randn(b, SIZE, SIZE, generator=g),
        "rotation": tilt,
        "eye": torch.tensor([0.0, 0.0, -1.0]) + 0.05 * torch.randn(b, 3, generator=g),
    }
    leaves = {k: v.detach().to(device, dtype).clone().requires_grad_(True) for k, v in values.items()}
    fixed = {
        "flat": flat,
        "batch_index": batch_index,
        "face": s["face_idx"].reshape(-1)[flat],
        "focal": torch.full((b,), 3.0, device=device, dtype=dtype),
        **topo,
    }
    return leaves, fixed


def fused(x, f, shadows=True):
    shadow = (x["depth_map"], x["rotation"], x["eye"], f["focal"], SIZE, SHARPNESS, BIAS) if shadows else None
    return render_pixels(
        x["bary"], f["batch_index"], f["face"], f["flat"], x["vertices"], x["normals"], x["tangents"],
        f["faces"], f["uvs"], f["face_uvs"], f["face_wedges"], f["signs"], x["albedo"], x["normal_map"],
        x["light"], x["ambient"], x["mask"], BACKGROUND, shadow,
    )  # fmt: skip


def separate(x, f, shadows=True):
    """The same steps as separate Warp ops (autograd strings them together)."""
    position = interpolate(x["bary"], x["vertices"], f["batch_index"], f["face"], f["faces"])
    visibility = None
    if shadows:
        coords, depth = project_points(position, f["batch_index"], x["rotation"], x["eye"], f["focal"], SIZE)
        visibility = pcf_visibility(x["depth_map"], coords, depth, f["batch_index"], SHARPNESS, BIAS)
    colour, normals = fused_shade(
        x["bary"], f["batch_index"], f["face"], position, x["normals"], x["tangents"], f["uvs"], f["signs"],
        f["faces"], f["face_uvs"], f["face_wedges"], x["albedo"], x["normal_map"], x["light"], x["ambient"],
        visibility,
    )  # fmt: skip
    image = composite(colour, f["flat"], x["mask"], BACKGROUND)
    return image, normals, position, visibility


def gradients(path, x, f, shadows, outputs):
    """Gradients of every leaf for random weights of the first ``outputs`` outputs."""
    out = path(x, f, shadows)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g).to(o)).sum() for o in out[:outputs] if o is not None)
    grads = torch.autograd.grad(loss, [x[k] for k in NAMES], allow_unused=True)
    return out, dict(zip(NAMES, grads))


@pytest.fixture(params=[1, 2], ids=["one_part", "two_parts"])
def parts(request, monkeypatch):
    """The CPU work in one part, or split in two parts run on two threads (as on a 2-core machine) even for
    the small test scenes; yields the number of parts of each ``parallel.run``."""
    counts, run = [], parallel.run

    def counted(device, module, items, job):
        counts.append(len(items))
        return run(device, module, items, job)

    monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 16 if request.param == 2 else 10**9)
    monkeypatch.setattr(parallel, "run", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield request.param, counts
    torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shadows", [True, False])
def test_matches_the_separate_ops_bit_for_bit(device, shadows, parts):
    """Image and shading normals weighted: the same kernels on the same parts give the same bits, gradients
    included (the accumulators of both sum their parts in the same order)."""
    if device != "cpu" and parts[0] == 2:
        pytest.skip("parts are a CPU matter")
    x, f = inputs(device, size=48, n=4, batch=2)
    assert f["flat"].shape[0] > 64  # two parts of >= 16 pixels, image ranges of >= 16
    out_s, grad_s = gradients(separate, x, f, shadows, outputs=2)
    del parts[1][:]
    out_f, grad_f = gradients(fused, x, f, shadows, outputs=2)
    for a, b in zip(out_f, out_s):
        assert (a is None and b is None) or torch.equal(a, b)
    for name in NAMES:
        a, b = grad_f[name], grad_s[name]
        assert (a is None and b is None) or torch.equal(a, b), name
    if device == "cpu":  # one hand-off to the threads per direction (the sums here are too small to split)
        assert parts[1] == ([2, 2] if parts[0] == 2 else [])


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_of_positions_and_visibility(device, parts):
    """All four outputs weighted: the positions' and visibilities' own gradients join the ones from the
    steps after them (sums in another order than autograd's: equal up to rounding)."""
    if device != "cpu" and parts[0] == 2:
        pytest.skip("parts are a CPU matter")
    x, f = inputs(device, size=48, n=4, batch=2)
    (_, grad_s), (_, grad_f) = (gradients(p, x, f, True, outputs=4) for p in (separate, fused))
    for name in NAMES:
        scale = grad_s[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(grad_f[name] / scale, grad_s[name] / scale, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    x, f = inputs(device, dtype=torch.float64, n=3, batch=1, size=4, tex=3)
    names = list(NAMES)

    def fn(*values):
        return fused(dict(zip(names, values)), f)

    assert torch.autograd.gradcheck(fn, [x[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-4)


def test_image_into_a_given_buffer():
    """``image_out``: the image is written into it (here a view of a larger batch's image) and returned as
    it, with the values and gradients of a call without it; a wrong buffer is refused."""
    x, f = inputs("cpu")
    plain = fused(x, f)
    shape = plain[0].shape
    big = torch.full((shape[0] + 1, *shape[1:]), 7.0)
    shadow = (x["depth_map"], x["rotation"], x["eye"], f["focal"], SIZE, SHARPNESS, BIAS)
    args = (
        x["bary"], f["batch_index"], f["face"], f["flat"], x["vertices"], x["normals"], x["tangents"],
        f["faces"], f["uvs"], f["face_uvs"], f["face_wedges"], f["signs"], x["albedo"], x["normal_map"],
        x["light"], x["ambient"], x["mask"], BACKGROUND, shadow,
    )  # fmt: skip
    got = render_pixels(*args, image_out=big[1:])
    assert got[0].data_ptr() == big[1:].data_ptr() and torch.equal(big[0], torch.full(shape[1:], 7.0))
    for a, b in zip(got, plain):
        assert torch.equal(a, b)
    up = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    grads = [torch.autograd.grad((o[0] * up).sum(), [x["vertices"], x["albedo"]]) for o in (plain, got)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    with pytest.raises(ValueError, match="image_out must be a"):
        render_pixels(*args, image_out=big)
    with pytest.raises(ValueError, match="image_out must be a"):
        render_pixels(*args, image_out=big[1:].double())
    with pytest.raises(ValueError, match="contiguous"):
        render_pixels(*args, image_out=big[1:].transpose(1, 2).contiguous().transpose(1, 2))


def test_covered_pixels_out_of_order_are_refused():
    x, f = inputs("cpu")
    f["flat"] = f["flat"].flip(0)
    with pytest.raises(ValueError, match="flat_index must be increasing"):
        fused(x, f)


def test_no_covered_pixels_gives_the_background(parts):
    """No face on any pixel: the image is the background through the soft mask, whose gradient is the
    only one (the other inputs get zeros)."""
    x, f = inputs("cpu", size=48)
    f.update(flat=f["flat"][:0], batch_index=f["batch_index"][:0], face=f["face"][:0])
    x["bary"] = x["bary"][:0].detach().requires_grad_(True)
    image, normals, position, visibility = fused(x, f)
    assert normals.shape == position.shape == (0, 3) and visibility.shape == (0,)
    bg = torch.tensor(BACKGROUND)
    torch.testing.assert_close(image, (1 - x["mask"][..., None]) * bg, atol=1e-6, rtol=0)
    w = torch.randn(image.shape, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad((image * w).sum(), [x[k] for k in NAMES])
    for name, g in zip(NAMES, grads):
        expected = -(w * bg).sum(-1) if name == "mask" else torch.zeros_like(x[name])
        torch.testing.assert_close(g, expected, atol=1e-6, rtol=0, msg=name)
