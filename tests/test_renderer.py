"""The Renderer end to end: Lambert's law, normal mapping, shadows, backends, light recovery."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from harp_kaolin.render import Camera, Renderer
from harp_kaolin.render.texture import flat_normal_map
from tests.conftest import DEVICES

SIZE = 48  # image side of the analytic scenes, pixels
PIXEL_TOL = 2e-4  # rendered vs independently computed pixel values (float32)
SHADOW_TOL = 0.05  # visibility: below this in full shadow, above 1 - this when lit
BACKEND_IMAGE_TOL = 1e-4  # warp vs torch renderer, image
BACKEND_GRAD_TOL = 2e-3  # warp vs torch renderer, gradients relative to their largest entry
LIGHT_TOL = 0.005  # meters: light position recovered by the photometric fit
PLANE_Z, OCCLUDER_Z = 0.3, 0.22  # depths of the test scene, meters


def camera(size: int = SIZE) -> Camera:
    return Camera(width=size, height=size, fx=1.2 * size, fy=1.2 * size, cx=size / 2, cy=size / 2)


def quad(cx: float, cy: float, half: float, z: float):
    """A square facing the camera at depth z: vertices (4, 3), faces (2, 3), uvs (4, 2) (u = +x, v = -y)."""
    v = torch.tensor(
        [
            [cx - half, cy - half, z],
            [cx - half, cy + half, z],
            [cx + half, cy + half, z],
            [cx + half, cy - half, z],
        ]
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])  # counter-clockwise seen from the camera
    uvs = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    return v, faces, uvs


def plane_scene(with_occluder: bool = False):
    """A 0.3 m square at z = 0.3 filling the view, and optionally a 2 cm square at z = 0.22 (hand scale)."""
    parts = [quad(0.0, 0.0, 0.15, PLANE_Z)] + ([quad(0.0, 0.0, 0.01, OCCLUDER_Z)] if with_occluder else [])
    verts, faces, uvs, offset = [], [], [], 0
    for v, f, t in parts:
        verts.append(v), faces.append(f + offset), uvs.append(t)
        offset += v.shape[0]
    faces = torch.cat(faces)
    return torch.cat(verts)[None], faces, faces.clone(), torch.cat(uvs)


def pixel_rays(cam: Camera, depth: float) -> torch.Tensor:
    """(H, W, 3) camera-space points at the given depth along each pixel centre's ray."""
    v, u = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    return torch.stack(
        [(u - cam.cx) / cam.fx * depth, (v - cam.cy) / cam.fy * depth, torch.full_like(u, depth)], -1
    )


def constant_map(values, size: int = 4) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None, :, None, None].expand(1, len(values), size, size)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tilt", [0.0, 0.4])
def test_plane_follows_lambert_cosine_law(device, tilt):
    """Pixel values match albedo * (k_a + k_d * cos), cos computed here from the pixel rays."""
    verts, faces, face_uvs, uvs = plane_scene()
    r = Renderer(camera(), faces, face_uvs, uvs, shadows=False).to(device)
    light = torch.tensor([0.04, -0.025, 0.175])
    a = torch.tensor([-1.0])
    albedo = torch.tensor([0.9, 0.6, 0.3])
    # Tangent-space normal tilted towards +u, which is +x on this plane.
    normal_map = constant_map([math.sin(tilt), 0.0, math.cos(tilt)])
    out = r(
        verts.to(device), constant_map(albedo.tolist()).to(device), normal_map.to(device), light.to(device), a
    )
    points = pixel_rays(r.camera, PLANE_Z)
    normal = torch.tensor([math.sin(tilt), 0.0, -math.cos(tilt)])  # camera-facing normal is -z
    to_light = torch.nn.functional.normalize(light - points, dim=-1)
    cos = (to_light * normal).sum(-1).clamp_min(0)
    k_a = torch.sigmoid(a)
    expected = albedo * (k_a + (1 - k_a) * cos[..., None])
    assert (out.face_idx >= 0).all()
    torch.testing.assert_close(out.image[0].cpu(), expected, atol=PIXEL_TOL, rtol=0)
    torch.testing.assert_close(out.depth[0].cpu(), torch.full((SIZE, SIZE), PLANE_Z), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.normals[0].cpu(), normal.expand(SIZE, SIZE, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_occluder_shadow_on_plane(device):
    verts, faces, face_uvs, uvs = plane_scene(with_occluder=True)
    r = Renderer(camera(), faces, face_uvs, uvs).to(device)
    light = torch.tensor([0.08, -0.08, 0.0])
    out = r(
        verts.to(device),
        constant_map([0.8] * 3).to(device),
        flat_normal_map(4).to(device),
        light.to(device),
        0.0,
    )
    vis, face_idx = out.visibility[0].cpu(), out.face_idx[0].cpu()
    # Shadow centre: the ray from the light through the occluder centre, on the plane, seen by the camera.
    hit = light + (torch.tensor([0.0, 0.0, OCCLUDER_Z]) - light) * (PLANE_Z - light[2]) / (
        OCCLUDER_Z - light[2]
    )
    cam = r.camera
    u, v = cam.fx * hit[0] / hit[2] + cam.cx, cam.fy * hit[1] / hit[2] + cam.cy
    shadow_px = (int(v), int(u))
    assert face_idx[shadow_px] < 2  # the plane is visible there, beside the occluder's image
    assert vis[shadow_px] < SHADOW_TOL
    assert vis[face_idx >= 2].min() > 1 - SHADOW_TOL  # the occluder itself is lit
    lit_px = (SIZE // 2 - 8, SIZE // 2 + 8)  # towards the light: no occluder in between
    assert vis[lit_px] > 1 - SHADOW_TOL
    assert vis[face_idx < 2].median() > 1 - SHADOW_TOL  # the plane does not shadow itself (bias)
    lit = out.image[0][lit_px].cpu()
    assert (out.image[0][shadow_px].cpu() < lit).all()  # darker in the shadow


@pytest.mark.parametrize("device", DEVICES)
def test_shadows_off_gives_full_visibility(device):
    verts, faces, face_uvs, uvs = plane_scene(with_occluder=True)
    args = (verts.to(device), constant_map([0.8] * 3).to(device), flat_normal_map(4).to(device))
    light = torch.tensor([0.08, -0.08, 0.0], device=device)
    off = Renderer(camera(), faces, face_uvs, uvs, shadows=False).to(device)(*args, light, 0.0)
    on = Renderer(camera(), faces, face_uvs, uvs).to(device)(*args, light, 0.0)
    assert (off.visibility == 1).all()
    assert on.visibility.min() < SHADOW_TOL
    lit = on.visibility > 1 - 1e-6
    torch.testing.assert_close(off.image[lit], on.image[lit], atol=1e-5, rtol=0)


def test_warp_and_torch_backends_agree():
    verts, faces, face_uvs, uvs = plane_scene(with_occluder=True)
    g = torch.Generator().manual_seed(0)
    verts = verts + 0.002 * torch.randn(verts.shape, generator=g)
    albedo = torch.rand(1, 3, 8, 8, generator=g)
    normal = torch.nn.functional.normalize(
        torch.rand(1, 3, 8, 8, generator=g) + torch.tensor([0, 0, 2.0])[:, None, None], dim=1
    )
    weights = torch.rand(1, SIZE, SIZE, 3, generator=g)
    results = []
    for backend in ("warp", "torch"):
        leaves = [
            t.clone().requires_grad_() for t in (verts, albedo, normal, torch.tensor([0.08, -0.08, 0.0]))
        ]
        r = Renderer(camera(), faces, face_uvs, uvs, backend=backend)
        out = r(*leaves, torch.tensor([-0.5]))
        (out.image * weights).sum().backward()
        results.append((out, [t.grad for t in leaves]))
    (out_w, grads_w), (out_t, grads_t) = results
    torch.testing.assert_close(out_w.image, out_t.image, atol=BACKEND_IMAGE_TOL, rtol=0)
    torch.testing.assert_close(out_w.silhouette, out_t.silhouette, atol=BACKEND_IMAGE_TOL, rtol=0)
    assert torch.equal(out_w.face_idx, out_t.face_idx)
    for gw, gt in zip(grads_w, grads_t):
        scale = gt.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(gw / scale, gt / scale, atol=BACKEND_GRAD_TOL, rtol=0)


def test_photometric_fit_recovers_light_position():
    """Adam on an L1 photometric loss moves a wrong light to the true one (plane under a close light)."""
    verts, faces, face_uvs, uvs = plane_scene()
    r = Renderer(camera(32), faces, face_uvs, uvs, shadow_size=64)
    albedo, normal, ambient = constant_map([0.7, 0.6, 0.5]), flat_normal_map(4), torch.tensor([-1.5])
    true_light = torch.tensor([0.025, -0.02, 0.225])
    with torch.no_grad():
        target = r(verts, albedo, normal, true_light, ambient).image
    light = torch.tensor([-0.015, 0.015, 0.19], requires_grad=True)
    start = (light - true_light).norm().item()
    opt = torch.optim.Adam([light], lr=0.005)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, 0.95)  # Adam's steps shrink with the rate
    for _ in range(40):
        opt.zero_grad()
        (r(verts, albedo, normal, light, ambient).image - target).abs().mean().backward()
        opt.step()
        decay.step()
    assert (light.detach() - true_light).norm().item() < LIGHT_TOL < start


def test_renderer_on_the_anny_hand(anny_hand_sub):
    hand = anny_hand_sub
    with torch.no_grad():
        v = hand(torch.zeros(2, hand.num_pose, 3), None, torch.tensor([[0.0, math.pi / 2, 0.0]] * 2)).vertices
        v = v - (v.amin(1, keepdim=True) + v.amax(1, keepdim=True)) / 2 + torch.tensor([0.0, 0.0, 0.4])
    r = Renderer(camera(64).to_dict(), hand.faces, hand.face_uvs, hand.uvs)
    v.requires_grad_()
    light = torch.tensor([0.1, -0.1, 0.2], requires_grad=True)
    albedo = torch.full((1, 3, 16, 16), 0.6, requires_grad=True)
    out = r(v, albedo, flat_normal_map(16), light, torch.tensor([0.0]))
    assert out.image.shape == (2, 64, 64, 3) and out.normals.shape == (2, 64, 64, 3)
    for t in (out.silhouette, out.visibility, out.depth, out.face_idx):
        assert t.shape == (2, 64, 64)
    covered = out.face_idx >= 0
    assert covered.float().mean() > 0.05
    torch.testing.assert_close(
        out.normals[covered].norm(dim=-1), torch.ones(int(covered.sum())), atol=1e-5, rtol=0
    )
    out.image.sum().backward()
    for t in (v, light, albedo):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_renderer_errors_name_argument():
    verts, faces, face_uvs, uvs = plane_scene()
    r = Renderer(camera(), faces, face_uvs, uvs)
    maps = constant_map([0.5] * 3), flat_normal_map(4)
    with pytest.raises(ValueError, match="vertices"):
        r(verts[0], *maps, torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="albedo"):
        r(verts, maps[0][:, :2], maps[1], torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="light"):
        r(verts, *maps, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="backend"):
        Renderer(camera(), faces, face_uvs, uvs, backend="opengl")


def anny_batch(hand, batch: int, size: int = 64):
    """``batch`` posed anny hands in front of a ``size``-pixel camera (vertices (B, V, 3), camera)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pose = 0.2 * torch.randn(batch, hand.num_pose, 3, generator=g)
        orient = torch.tensor([0.0, math.pi / 2, 0.0]) + 0.2 * torch.randn(batch, 3, generator=g)
        v = hand(pose, None, orient).vertices
        v = v - (v.amin(1, keepdim=True) + v.amax(1, keepdim=True)) / 2 + torch.tensor([0.0, 0.0, 0.4])
    return v, camera(size)


def render_all_outputs(r, inputs, weights):
    """Render, then backward a weighted sum of every output (image, silhouette, normals, visibility,
    depth); returns the outputs and the inputs' gradients."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = r(*leaves)
    loss = sum((getattr(out, name) * w).sum() for name, w in weights.items())
    loss.backward()
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("textures", ["shared", "per_item"])
@pytest.mark.parametrize("shadows", [True, False], ids=["shadows", "no_shadows"])
def test_sliced_render_matches_one_render(two_threads, anny_hand_sub, monkeypatch, textures, shadows):
    """On CPU with two threads the Warp renderer renders a batch as slices at the same time
    (``renderer._render_slices``): the same outputs, bit for bit, as one render of the whole batch whose
    launches are split over the threads, and the same gradients (up to the order of the sums of the
    shared ones) for every input, through every output."""
    import harp_kaolin.render.renderer as renderer_module

    hand = anny_hand_sub
    v, cam = anny_batch(hand, 3)
    g = torch.Generator().manual_seed(2)
    items = 1 if textures == "shared" else 3
    albedo = torch.rand(items, 3, 16, 16, generator=g)
    normal = torch.nn.functional.normalize(torch.rand(items, 3, 16, 16, generator=g) + 1.0, dim=1)
    inputs = (v, albedo, normal, torch.tensor([[0.1, -0.1, 0.2]] * 3), torch.tensor([[0.3], [-0.2], [0.0]]))
    shapes = {"image": (3, 64, 64, 3), "silhouette": (3, 64, 64), "normals": (3, 64, 64, 3)}
    shapes.update(visibility=(3, 64, 64), depth=(3, 64, 64))
    weights = {name: torch.rand(shape, generator=g) for name, shape in shapes.items()}
    r = Renderer(cam, hand.faces, hand.face_uvs, hand.uvs, shadows=shadows)
    threads = set()
    render_warp = Renderer._render_warp

    def recording(self, *args, **kwargs):
        threads.add(threading.get_ident())
        return render_warp(self, *args, **kwargs)

    monkeypatch.setattr(Renderer, "_render_warp", recording)
    results = {}
    for sliced in (False, True):
        monkeypatch.setattr(renderer_module, "SLICED", sliced)
        threads.clear()
        results[sliced] = render_all_outputs(r, inputs, weights)
        assert len(threads) == (2 if sliced else 1)
    (one, grads_one), (sliced, grads_sliced) = results[False], results[True]
    assert (one.face_idx >= 0).float().mean() > 0.05
    for name in ("image", "silhouette", "face_idx", "normals", "visibility", "depth"):
        assert torch.equal(getattr(sliced, name), getattr(one, name)), name
    assert torch.equal(sliced.pixels.flat_index, one.pixels.flat_index)
    assert torch.equal(sliced.pixels.batch_index, one.pixels.batch_index)
    assert (sliced.pixel_visibility is None) == (not shadows)
    for got, want in zip(grads_sliced, grads_one):
        assert got.shape == want.shape and want.abs().sum() > 0
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, atol=1e-6, rtol=0)


def test_sliced_render_without_gradients_and_twice_backward(two_threads, anny_hand_sub):
    """The sliced render under no_grad builds no graph (also not on the pool thread), with only some inputs
    needing gradients gives them alone, and a second backward through it says what is wrong."""
    hand = anny_hand_sub
    v, cam = anny_batch(hand, 2)
    r = Renderer(cam, hand.faces, hand.face_uvs, hand.uvs)
    maps = constant_map([0.6, 0.5, 0.4], 16), flat_normal_map(16)
    light = torch.tensor([0.1, -0.1, 0.2])
    with torch.no_grad():
        plain = r(v, *maps, light, 0.0)
    assert not plain.image.requires_grad and not plain.pixels.position.requires_grad
    light = light.clone().requires_grad_()
    out = r(v, *maps, light, 0.0)
    assert torch.equal(out.image, plain.image)
    out.image.sum().backward(retain_graph=True)
    assert light.grad is not None and light.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="freed by an earlier backward"):
        out.image.sum().backward()
