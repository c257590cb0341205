"""Fused Warp shading kernel vs its pure-torch twin (renderer.interpolate_pixels + shade_pixels)."""

from __future__ import annotations

import pytest
import torch

from harp_kaolin.render.renderer import (
    Fragments,
    Pixels,
    composite_pixels,
    covered_pixels,
    interpolate_pixels,
    shade_pixels,
    surface_frames,
)
from harp_kaolin.render.texture import wedge_signs, wedges
from tests.conftest import DEVICES
from warp_kernels import parallel
from warp_kernels.shading import composite as warp_composite
from warp_kernels.shading import fused_shade
from warp_kernels.shading import surface_frames as warp_surface_frames

FORWARD_TOL = 1e-5  # float32 colour and normals vs the twin
GRAD_TOL = 1e-4  # float32 gradients vs the twin (relative, atomics reorder sums)
GRADCHECK_TOL = 1e-6  # float64 finite differences


def scene(device, dtype=torch.float32, n=4, batch=2, size=6, tex=5, seed=0, tex_batch=1):
    """A bumpy grid in front of the camera, random fragments over it, textures, light and ambient."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    grid = torch.stack([xs - 0.5, ys - 0.5, 0.1 * torch.rand(n, n, generator=g) + 1.0], -1).reshape(-1, 3)
    vertices = grid + 0.02 * torch.randn(batch, n * n, 3, generator=g)
    uvs = torch.stack([xs, ys], -1).reshape(-1, 2) * 1.2 - 0.1  # a little outside [0, 1]: border clamp
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    face_uvs = faces.clone()
    face_idx = torch.randint(-1, faces.shape[0], (batch, size, size), generator=g)
    bary = torch.rand(batch, size, size, 3, generator=g) + 0.1
    bary = torch.where(face_idx[..., None] >= 0, bary / bary.sum(-1, keepdim=True), 0.0)
    normal = torch.cat(
        [0.3 * torch.randn(tex_batch, 2, tex, tex, generator=g), torch.ones(tex_batch, 1, tex, tex)], 1
    )
    wedge_vertex, _, face_wedges = wedges(faces, face_uvs)
    out = {
        "vertices": vertices,
        "bary": bary,
        "albedo": torch.rand(tex_batch, 3, tex, tex, generator=g),
        "normal_map": torch.nn.functional.normalize(normal, dim=1),
        "light": torch.tensor([0.3, -0.4, 0.2]).expand(batch, 3) + 0.1 * torch.randn(batch, 3, generator=g),
        "ambient": torch.randn(batch, 1, generator=g),
    }
    out = {k: v.to(device, dtype) for k, v in out.items()}
    topo = {"faces": faces, "uvs": uvs, "face_uvs": face_uvs, "face_wedges": face_wedges}
    topo = {k: v.to(device) for k, v in topo.items()}
    topo["wedge_vertex"] = wedge_vertex.to(device)
    topo["signs"] = wedge_signs(uvs, face_uvs, face_wedges, wedge_vertex.shape[0]).to(device)
    out["face_idx"] = face_idx.to(device)
    out["visibility_seed"] = torch.rand(int((face_idx >= 0).sum()), generator=g).to(device, dtype)
    return out, topo


def render(backend, s, topo, vertices, bary, albedo, normal_map, light, ambient, visibility):
    """Colour and shading normals of the covered pixels through either path."""
    t = topo
    frames = surface_frames(
        vertices, t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"]
    )
    frags = Fragments.from_dense(bary, bary[..., 0], s["face_idx"])
    topology = (t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["signs"])
    pixels = interpolate_pixels(frags, vertices, frames, *topology)
    if backend == "torch":
        return shade_pixels(pixels, albedo, normal_map, light, ambient, visibility)
    flat_index, batch_index = covered_pixels(s["face_idx"])
    face = s["face_idx"].reshape(-1)[flat_index]
    return fused_shade(
        bary.reshape(-1, 3)[flat_index], batch_index, face, pixels.position, frames.normals,
        frames.tangents, t["uvs"], t["signs"], t["faces"], t["face_uvs"], t["face_wedges"], albedo,
        normal_map, light, ambient, visibility,
    )  # fmt: skip


NAMES = ("vertices", "bary", "albedo", "normal_map", "light", "ambient", "visibility")


def leaves(s):
    values = [s[k] for k in NAMES[:-1]] + [s["visibility_seed"]]
    return [v.detach().clone().requires_grad_(True) for v in values]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tex_batch", [1, 2])
@pytest.mark.parametrize("shadows", [True, False])
def test_forward_matches_torch(device, tex_batch, shadows):
    s, topo = scene(device, tex_batch=tex_batch)
    args = leaves(s)
    if not shadows:
        args[-1] = None
    with torch.no_grad():
        ref = render("torch", s, topo, *args)
        got = render("warp", s, topo, *args)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=FORWARD_TOL, rtol=FORWARD_TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tex_batch", [1, 2])
def test_keeping_the_texture_samples_for_the_adjoint_changes_no_output(device, tex_batch):
    """With gradients the forward also keeps what the adjoint needs of the texture lookups
    (``shading._keep``); colour and shading normals are bit for bit those of a forward without them."""
    s, topo = scene(device, tex_batch=tex_batch)
    with torch.no_grad():
        plain = render("warp", s, topo, *leaves(s))
    kept = render("warp", s, topo, *leaves(s))
    assert all(k.requires_grad for k in kept)
    for p, k in zip(plain, kept):
        assert torch.equal(p, k.detach())


def check_backward(s, topo, device):
    """Gradients of random weights of both outputs, Warp vs torch, relative to the largest."""
    g = torch.Generator().manual_seed(1)
    grads = {}
    for backend in ("torch", "warp"):
        args = leaves(s)
        colour, normals = render(backend, s, topo, *args)
        w_c = torch.randn(colour.shape, generator=g.manual_seed(1)).to(device)
        w_n = torch.randn(normals.shape, generator=g.manual_seed(2)).to(device)
        ((colour * w_c).sum() + (normals * w_n).sum()).backward()
        grads[backend] = [a.grad for a in args]
    for name, r, w in zip(NAMES, grads["torch"], grads["warp"]):
        scale = r.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(w / scale, r / scale, atol=GRAD_TOL, rtol=0, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tex_batch", [1, 2])
def test_backward_matches_torch(device, tex_batch):
    s, topo = scene(device, tex_batch=tex_batch)
    check_backward(s, topo, device)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    s, topo = scene(device, dtype=torch.float64, n=3, batch=1, size=3, tex=3)
    flat_index, batch_index = covered_pixels(s["face_idx"])
    face = s["face_idx"].reshape(-1)[flat_index]
    t = topo
    frames = surface_frames(
        s["vertices"], t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"]
    )
    position = torch.randn(flat_index.shape[0], 3, dtype=torch.float64, device=device)

    def fn(bary, position, normals, tangents, albedo, normal_map, light, ambient, visibility):
        return fused_shade(
            bary.reshape(-1, 3)[flat_index], batch_index, face, position, normals, tangents, t["uvs"],
            t["signs"], t["faces"], t["face_uvs"], t["face_wedges"], albedo, normal_map, light, ambient,
            visibility,
        )  # fmt: skip

    inputs = [s["bary"], position, frames.normals, frames.tangents, s["albedo"], s["normal_map"]]
    inputs += [s["light"], s["ambient"], s["visibility_seed"]]
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=GRADCHECK_TOL, rtol=1e-4)


# ------------------------------------------------------------------------------- surface frames
def frames_both(s, topo, vertices):
    t = topo
    args = (t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"])
    ref = surface_frames(vertices, *args)
    return (ref.normals, ref.tangents), warp_surface_frames(vertices, *args)


@pytest.mark.parametrize("device", DEVICES)
def test_frames_forward_matches_torch(device):
    s, topo = scene(device)
    with torch.no_grad():
        ref, got = frames_both(s, topo, s["vertices"])
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=FORWARD_TOL, rtol=FORWARD_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_frames_backward_matches_torch(device):
    s, topo = scene(device)
    grads = []
    for which in range(2):
        v = s["vertices"].detach().clone().requires_grad_(True)
        normals, tangents = frames_both(s, topo, v)[which]
        g = torch.Generator().manual_seed(3)
        w_n = torch.randn(normals.shape, generator=g).to(device)
        w_t = torch.randn(tangents.shape, generator=g).to(device)
        ((normals * w_n).sum() + (tangents * w_t).sum()).backward()
        grads.append(v.grad)
    scale = grads[0].abs().max()
    torch.testing.assert_close(grads[1] / scale, grads[0] / scale, atol=GRAD_TOL, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_frames_gradcheck_float64(device):
    s, topo = scene(device, dtype=torch.float64, n=3, batch=1)
    t = topo
    args = (t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"])
    v = s["vertices"].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: warp_surface_frames(x, *args),
        (v,),
        eps=1e-6,
        atol=GRADCHECK_TOL,
        rtol=1e-4,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", [False, True], ids=["one_part", "two_parts"])
def test_frames_of_the_pixels_faces_are_the_full_frames(device, split, two_threads, monkeypatch):
    """With ``pixels`` (the (item, face) of some pixels) the Warp frames at those faces' corners are the
    frames of the full computation bit for bit, every other frame is zero, and the vertex gradient of a
    loss on the corner frames is the full computation's, bit for bit (the faces it skips add only
    zeros there). An item without pixels gets no frame."""
    if split:
        monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 1)  # items split over two threads
    s, t = scene(device, n=8, batch=3)
    args = (t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"])
    batch_index = torch.tensor([0, 0, 0, 2, 2, 2, 2], device=device)
    face = torch.tensor([3, 3, 20, 40, 41, 97, 40], device=device)
    mark = torch.zeros(3, s["vertices"].shape[1], dtype=torch.bool, device=device)
    mark[batch_index[:, None], t["faces"][face]] = True
    wedge_mark = mark[:, t["wedge_vertex"]]
    assert 0 < mark.float().mean() < 0.25 and not mark[1].any()
    g = torch.Generator().manual_seed(4)
    w_n = torch.randn(mark.shape + (3,), generator=g).to(device) * mark[..., None]
    w_t = torch.randn(wedge_mark.shape + (3,), generator=g).to(device) * wedge_mark[..., None]
    results = []
    for pixels in (None, (batch_index, face)):
        v = s["vertices"].detach().clone().requires_grad_(True)
        normals, tangents = warp_surface_frames(v, *args, pixels=pixels)
        ((normals * w_n).sum() + (tangents * w_t).sum()).backward()
        results.append((normals.detach(), tangents.detach(), v.grad))
    (full_n, full_t, full_g), (part_n, part_t, part_g) = results
    assert torch.equal(part_n[mark], full_n[mark]) and torch.equal(part_t[wedge_mark], full_t[wedge_mark])
    assert not part_n[~mark].any() and not part_t[~wedge_mark].any()
    assert full_g.abs().max() > 0 and torch.equal(part_g, full_g)


def test_frames_pixels_are_checked():
    s, t = scene("cpu", n=4, batch=2)
    args = (t["faces"], t["uvs"], t["face_uvs"], t["face_wedges"], t["wedge_vertex"])
    faces = t["faces"].shape[0]
    cases = [
        ((torch.tensor([1, 0]), torch.tensor([0, 1])), "sorted"),
        ((torch.tensor([0, 2]), torch.tensor([0, 1])), "out of range"),
        ((torch.tensor([0, 1]), torch.tensor([0, faces])), "out of range"),
        ((torch.tensor([0, 1]), torch.tensor([-1, 1])), "out of range"),
        ((torch.tensor([0, 1]), torch.tensor([0])), "two \\(N,\\) tensors"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), "integer"),
    ]
    for pixels, message in cases:
        with pytest.raises(ValueError, match=message):
            warp_surface_frames(s["vertices"], *args, pixels=pixels)


# ------------------------------------------------------------------------------------ composite
def composite_inputs(device, dtype=torch.float32, seed=0):
    s, _ = scene(device, dtype=dtype, seed=seed)
    flat_index, _ = covered_pixels(s["face_idx"])
    g = torch.Generator().manual_seed(seed + 1)
    colour = torch.rand(flat_index.shape[0], 3, generator=g).to(device, dtype).requires_grad_(True)
    mask = torch.rand(s["face_idx"].shape, generator=g).to(device, dtype).requires_grad_(True)
    return flat_index, colour, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("background", [1.0, (0.2, 0.5, 0.9)])
def test_composite_matches_torch(device, background):
    flat_index, colour, mask = composite_inputs(device)
    pixels = Pixels(flat_index=flat_index, batch_index=flat_index, position=colour)
    bg = background if isinstance(background, float) else torch.tensor(background, device=device)
    ref = composite_pixels(colour, pixels, mask, bg)
    got = warp_composite(colour, flat_index, mask, bg)
    torch.testing.assert_close(got, ref, atol=FORWARD_TOL, rtol=FORWARD_TOL)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4)).to(device)
    grads = [torch.autograd.grad((out * w).sum(), (colour, mask)) for out in (ref, got)]
    for r, g in zip(*grads):
        torch.testing.assert_close(g, r, atol=GRAD_TOL, rtol=GRAD_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_composite_gradcheck_float64(device):
    flat_index, colour, mask = composite_inputs(device, dtype=torch.float64)
    mask = mask[:1, :3, :3].detach().requires_grad_(True)
    keep = flat_index < 9
    flat_index, colour = flat_index[keep], colour[keep].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, m: warp_composite(c, flat_index, m, 0.3), (colour, mask), atol=GRADCHECK_TOL
    )


# ------------------------------------------------------------------------- CPU parts (threads)
@pytest.fixture
def two_parts(monkeypatch):
    """Split every CPU launch into two parts run on two threads, as on a 2-core machine, even for the small
    test scenes; yields the number of parts of each ``parallel.run``."""
    monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 16)
    parts, run = [], parallel.run

    def counted(device, module, items, job):
        parts.append(len(items))
        return run(device, module, items, job)

    monkeypatch.setattr(parallel, "run", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield parts
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 2])
def test_parts_shading_matches_torch(two_parts, batch):
    # One batch item: both parts hit the same vertices, wedges, texels, light and ambient, whose gradients
    # each part accumulates privately (Warp's CPU atomic_add is not atomic); many pixels per texel and
    # vertex make concurrent parts collide. Two: one texture per item.
    s, topo = scene("cpu", n=3, batch=batch, size=256, tex=2, tex_batch=batch)
    args = leaves(s)
    with torch.no_grad():
        ref = render("torch", s, topo, *args)
        got = render("warp", s, topo, *args)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=FORWARD_TOL, rtol=FORWARD_TOL)
    check_backward(s, topo, "cpu")
    assert two_parts == [2, 2, 2]  # forward (twice) and backward


def test_parts_frames_match_torch(two_parts):
    s, topo = scene("cpu", n=12, batch=2)  # 242 faces per item: one item per part
    v = s["vertices"].detach().clone().requires_grad_(True)
    ref, got = frames_both(s, topo, v)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=FORWARD_TOL, rtol=FORWARD_TOL)
    weights = [torch.randn(r.shape, generator=torch.Generator().manual_seed(k)) for k, r in enumerate(ref)]
    grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), v) for out in (ref, got)]
    scale = grads[0][0].abs().max()
    torch.testing.assert_close(grads[1][0] / scale, grads[0][0] / scale, atol=GRAD_TOL, rtol=0)
    assert two_parts == [2, 2]


@pytest.mark.parametrize("order", ["increasing", "shuffled"])
def test_parts_composite_matches_torch(two_parts, order):
    """Two parts: with increasing covered pixels (the rasterizer's) each part runs the background and the
    covered pass over its pixel range, one run per direction; in any other order the passes run apart."""
    flat_index, colour, mask = composite_inputs("cpu")
    if order == "shuffled":
        perm = torch.randperm(flat_index.shape[0], generator=torch.Generator().manual_seed(2))
        flat_index, colour = flat_index[perm], colour.detach()[perm].requires_grad_(True)
    pixels = Pixels(flat_index=flat_index, batch_index=flat_index, position=colour)
    ref = composite_pixels(colour, pixels, mask, 0.4)
    got = warp_composite(colour, flat_index, mask, 0.4)
    torch.testing.assert_close(got, ref, atol=FORWARD_TOL, rtol=FORWARD_TOL)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    grads = [torch.autograd.grad((out * w).sum(), (colour, mask)) for out in (ref, got)]
    for r, g in zip(*grads):
        torch.testing.assert_close(g, r, atol=GRAD_TOL, rtol=GRAD_TOL)
    assert two_parts == ([2, 2] if order == "increasing" else [2, 2, 2, 2])  # forward, backward
