"""Shadow-map visibility: the Warp PCF op against its torch twin, gradients, and occluder geometry."""

from __future__ import annotations

import pytest
import torch

from harp_kaolin.render.shading import bounding_sphere, light_view, shadow_map, shadow_visibility
from tests.conftest import DEVICES
from warp_kernels import parallel, reference
from warp_kernels.project import rigid_transform
from warp_kernels.shadow import pcf_visibility, project_points

FORWARD_TOL = 1e-5  # visibility, warp vs twin (float32)
BACKWARD_TOL = 1e-3  # gradients, warp vs twin (float32; s = 1000 amplifies rounding)
SHADOW_TOL = 0.05  # visibility far from a shadow edge: below this in shadow, above 1 - this when lit


def random_case(device, dtype=torch.float32, b=2, size=8, n=40, seed=0, spread=0.004):
    """Depth maps near 0.5 m with texel-scale relief, and points around that depth."""
    g = torch.Generator().manual_seed(seed)
    depth_map = 0.5 + spread * torch.rand(b, size, size + 1, generator=g, dtype=dtype)
    coords = (
        torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([size + 3.0, size + 2.0], dtype=dtype) - 1
    )
    depth = 0.5 + spread * torch.rand(n, generator=g, dtype=dtype)
    batch_index = torch.randint(0, b, (n,), generator=g)
    return depth_map.to(device), coords.to(device), depth.to(device), batch_index.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_pcf_forward_matches_twin(device, cpu_chunk):
    args = random_case(device)
    got = pcf_visibility(*args, sharpness=1000.0, bias=0.005)
    expected = reference.pcf_visibility(*args, sharpness=1000.0, bias=0.005)
    torch.testing.assert_close(got, expected, atol=FORWARD_TOL, rtol=0)
    assert got.min() < 0.9 and got.max() > 0.9  # the case really mixes lit and shadowed taps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", [0.004, 0.5])  # 0.5 m: saturated sigmoids must keep finite gradients
def test_pcf_backward_matches_twin(device, spread, cpu_chunk):
    depth_map, coords, depth, batch_index = random_case(device, seed=1, spread=spread)
    upstream = torch.randn(depth.shape, generator=torch.Generator().manual_seed(2)).to(device)
    grads = []
    for fn in (pcf_visibility, reference.pcf_visibility):
        inputs = [t.clone().requires_grad_() for t in (depth_map, coords, depth)]
        (fn(*inputs, batch_index, 1000.0, 0.005) * upstream).sum().backward()
        grads.append([t.grad for t in inputs])
        assert all(torch.isfinite(t.grad).all() for t in inputs)
    for got, expected in zip(*grads):
        scale = expected.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got / scale, expected / scale, atol=BACKWARD_TOL, rtol=0)


def test_pcf_split_over_threads_matches_twin(monkeypatch):
    """Points split over 2 CPU threads whose lookups share texels (and batch items): forward and the
    depth-map gradient (private per-thread sums) still equal the twin's."""
    monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        depth_map, coords, depth, batch_index = random_case("cpu", size=3, n=200_000, seed=4)
        assert len(parallel.split(depth.device, depth.shape[0])) == 2
        upstream = torch.randn(depth.shape, generator=torch.Generator().manual_seed(5))
        results = []
        for fn in (pcf_visibility, reference.pcf_visibility):
            inputs = [t.clone().requires_grad_() for t in (depth_map, coords, depth)]
            out = fn(*inputs, batch_index, 1000.0, 0.005)
            (out * upstream).sum().backward()
            results.append([out, *(t.grad for t in inputs)])
    finally:
        torch.set_num_threads(threads)
    for got, expected in zip(*results):
        scale = expected.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got / scale, expected / scale, atol=BACKWARD_TOL, rtol=0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 300])
@pytest.mark.parametrize("chunk", [256, 16])
def test_pcf_simd_lanes_match_the_generic_kernel(monkeypatch, n, chunk):
    """The float32 CPU forward in SIMD lanes (runs of 8 points, the rest one by one, inside chunks of
    ``chunk``) against the generic Warp kernel: visibility and, through the 9 kept taps, the gradients;
    points far outside the map (border texels), on texel centres (zero bilinear weights) and deep in
    shadow (saturated sigmoids) included."""
    from warp_kernels import shadow

    monkeypatch.setattr(parallel, "CPU_CHUNK", chunk)
    depth_map, coords, depth, batch_index = random_case("cpu", n=n, seed=7, spread=0.05)
    coords[::3] = torch.floor(coords[::3]) + 0.5  # texel centres
    coords[1::5] *= 40.0  # far outside the map
    coords[4::7] = 3e9  # beyond 2**31 texels (a point in the light's plane): no integer column
    depth[2::4] += 0.2  # 0.2 m behind the map: sigmoid arguments near -200
    upstream = torch.randn(depth.shape, generator=torch.Generator().manual_seed(8))
    results = []
    for simd in (True, False):
        monkeypatch.setattr(shadow, "SIMD_CPU", simd)
        assert (shadow.pcf_forward_kernel(torch.float32, "cpu") is shadow._pcf_forward_simd) == simd
        inputs = [t.clone().requires_grad_() for t in (depth_map, coords, depth)]
        out = pcf_visibility(*inputs, batch_index, 1000.0, 0.005)
        (out * upstream).sum().backward()
        results.append([out, *(t.grad for t in inputs)])
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
    for got, expected in zip(results[0][1:], results[1][1:]):
        scale = expected.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got / scale, expected / scale, atol=1e-5, rtol=0)
    if n >= 8:  # the case mixes lit and shadowed points
        assert results[1][0].min() < 0.1 and results[1][0].max() > 0.9


def test_pcf_forward_kernel_choice():
    from warp_kernels import shadow

    assert shadow.pcf_forward_kernel(torch.float32, torch.device("cpu")) is shadow._pcf_forward_simd
    assert shadow.pcf_forward_kernel(torch.float64, torch.device("cpu")) is shadow._pcf_forward
    assert shadow.pcf_forward_kernel(torch.float32, torch.device("cuda")) is shadow._pcf_forward


@pytest.mark.parametrize("device", DEVICES)
def test_pcf_gradcheck(device):
    depth_map, coords, depth, batch_index = random_case(device, torch.float64, b=2, size=4, n=6, seed=3)
    inputs = tuple(t.requires_grad_() for t in (depth_map, coords, depth))
    # A softer sigmoid keeps finite differences (eps 1e-6) well inside the smooth regime.
    assert torch.autograd.gradcheck(lambda *x: pcf_visibility(*x, batch_index, 100.0, 0.005), inputs)


def test_pcf_empty_and_errors():
    depth_map, coords, depth, batch_index = random_case("cpu", n=0)
    assert pcf_visibility(depth_map, coords, depth, batch_index).shape == (0,)
    with pytest.raises(ValueError, match="depth_map"):
        pcf_visibility(depth_map[0], coords, depth, batch_index)
    with pytest.raises(ValueError, match="coords"):
        pcf_visibility(depth_map, coords.double(), depth, batch_index)
    with pytest.raises(ValueError, match="batch_index"):
        pcf_visibility(depth_map, coords, depth, batch_index.float())


# ----------------------------------------------------------------------------------------- geometry
def quad(centre, half, z):
    """Two triangles of a square at depth z (camera coordinates), facing the camera (-z)."""
    cx, cy = centre
    v = torch.tensor(
        [
            [cx - half, cy - half, z],
            [cx + half, cy - half, z],
            [cx + half, cy + half, z],
            [cx - half, cy + half, z],
        ]
    )
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, f


def scene():
    """A 0.2 m floor at z = 0.6 and a 0.04 m occluder at z = 0.5 straight below a light at the camera."""
    floor_v, floor_f = quad((0.0, 0.0), 0.1, 0.6)
    occ_v, occ_f = quad((0.0, 0.0), 0.02, 0.5)
    verts = torch.cat([floor_v, occ_v])[None]
    faces = torch.cat([floor_f, occ_f + 4])
    return verts, faces


def facing_faces(verts, faces, view):
    """Faces oriented so the light view sees their front (the rasterizer culls the others)."""
    q = view.transform(verts)[0]
    p = q[:, :2] / q[:, 2:3]
    a, b, c = p[faces[:, 0]], p[faces[:, 1]], p[faces[:, 2]]
    e1, e2 = b - a, c - a
    front = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0  # y down: clockwise on screen = CCW y-up
    return torch.where(front[:, None], faces, faces[:, [0, 2, 1]])


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_occluder_casts_shadow(backend):
    verts, faces = scene()
    light = torch.tensor([[0.0, 0.0, 0.0]])
    view = light_view(verts, light, size=64)
    faces = facing_faces(verts, faces, view)
    depth_map = shadow_map(verts, faces, view, backend=backend)
    assert depth_map.shape == (1, 64, 64)
    assert depth_map.min() > 0.45 and depth_map.min() < 0.55  # the occluder is seen
    floor_points = torch.tensor([[0.0, 0.0, 0.6], [0.004, -0.003, 0.6], [0.08, 0.0, 0.6], [-0.07, 0.07, 0.6]])
    occluder_top = torch.tensor([[0.0, 0.0, 0.5]])
    points = torch.cat([floor_points, occluder_top])
    vis = shadow_visibility(
        verts, faces, points, torch.zeros(5, dtype=torch.long), light, size=64, backend=backend
    )
    assert vis[:2].max() < SHADOW_TOL  # below the occluder
    assert vis[2:].min() > 1 - SHADOW_TOL  # outside its shadow, and the occluder itself (no self-shadow)


def test_shadow_visibility_gradients_reach_light_and_vertices():
    verts, faces = scene()
    light = torch.tensor([[0.0, 0.0, 0.0]])
    view = light_view(verts, light, size=64)
    faces = facing_faces(verts, faces, view)
    verts = verts.clone().requires_grad_()
    light = torch.tensor([[0.005, 0.0, 0.0]], requires_grad=True)
    # Points on the floor near the shadow edge, where V is between 0 and 1.
    points = torch.tensor([[0.024, 0.0, 0.6], [0.0, 0.025, 0.6]])
    vis = shadow_visibility(verts, faces, points, torch.zeros(2, dtype=torch.long), light, size=64)
    assert 0.01 < vis.min() and vis.max() < 0.99
    vis.sum().backward()
    assert light.grad.abs().sum() > 0
    assert verts.grad[0, 4:].abs().sum() > 0  # the occluder's vertices (through the depth map)


def projection_case(n=40, b=3, dtype=torch.float64, seed=6):
    """Points in front of random light views (vertices come from the light_view of a random cloud)."""
    g = torch.Generator().manual_seed(seed)
    vertices = 0.05 * torch.randn(b, 30, 3, generator=g, dtype=dtype) + torch.tensor([0, 0, 0.5], dtype=dtype)
    light = torch.randn(b, 3, generator=g, dtype=dtype) * 0.3
    view = light_view(vertices, light, 64)
    points = 0.05 * torch.randn(n, 3, generator=g, dtype=dtype) + torch.tensor([0, 0, 0.5], dtype=dtype)
    batch_index = torch.randint(0, b, (n,), generator=g)
    return view, points, batch_index


def test_project_points_matches_light_view_project(cpu_chunk):
    view, points, batch_index = projection_case()
    upstream = torch.randn(points.shape[0], 3, generator=torch.Generator().manual_seed(7), dtype=points.dtype)
    results = []
    for warp in (True, False):
        p, rot, eye = (t.detach().clone().requires_grad_() for t in (points, view.rotation, view.eye))
        if warp:
            coords, depth = project_points(p, batch_index, rot, eye, view.focal, view.size)
        else:
            moved = type(view)(eye=eye, rotation=rot, focal=view.focal, size=view.size, far=view.far)
            coords, depth = moved.project(p, batch_index)
        ((coords * upstream[:, :2]).sum() + (depth * upstream[:, 2]).sum()).backward()
        results.append((coords, depth, p.grad, rot.grad, eye.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_project_points_gradcheck_and_split(monkeypatch):
    view, points, batch_index = projection_case(n=8)
    inputs = tuple(t.detach().clone().requires_grad_() for t in (points, view.rotation, view.eye))
    assert torch.autograd.gradcheck(
        lambda p, r, e: project_points(p, batch_index, r, e, view.focal, view.size), inputs
    )
    # many points on few views, split over 2 threads: per-thread sums of the view gradients lose nothing
    monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        view, points, batch_index = projection_case(n=200_000, b=2)
        grads = []
        for parts_min in (1000, 10**9):
            monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", parts_min)
            rot, eye = (t.detach().clone().requires_grad_() for t in (view.rotation, view.eye))
            coords, depth = project_points(points, batch_index, rot, eye, view.focal, view.size)
            (coords.sum() + depth.sum()).backward()
            grads.append((rot.grad, eye.grad))
    finally:
        torch.set_num_threads(threads)
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_shadow_map_backends_agree_with_gradients():
    """The Warp backend's fused depth map equals the torch backend's rasterize-and-scatter, gradients to
    the vertices and the light included."""
    verts, faces = scene()
    g = torch.Generator().manual_seed(3)
    verts = verts + 0.002 * torch.randn(verts.shape, generator=g)
    light = torch.tensor([[0.01, -0.02, 0.0]])
    upstream = torch.randn(1, 48, 48, generator=g)
    results = []
    for backend in ("warp", "torch"):
        v, lp = verts.clone().requires_grad_(), light.clone().requires_grad_()
        view = light_view(v, lp, size=48)
        depth = shadow_map(
            v, facing_faces(verts, faces, light_view(verts, light, size=48)), view, backend=backend
        )
        ((depth - view.far[:, None, None]).clamp_max(0) * upstream).sum().backward()
        results.append((depth.detach(), v.grad, lp.grad))
    for got, expected in zip(*results):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounding_sphere_warp_has_the_twins_bits(device, dtype):
    """The light view's framing is the same on both backends: the Warp bounding sphere equals the torch
    one bit for bit (box centre, then the largest distance), and holds every point."""
    gen = torch.Generator().manual_seed(3)
    for shape in ((8, 6413, 3), (3, 1, 3), (2, 17, 3)):
        points = (0.1 * torch.randn(*shape, generator=gen, dtype=dtype) + 0.5).to(device)
        centre, radius = bounding_sphere(points, "warp")
        ref_centre, ref_radius = bounding_sphere(points, "torch")
        assert torch.equal(centre, ref_centre) and torch.equal(radius, ref_radius)
        low, high = points.amin(1), points.amax(1)
        torch.testing.assert_close(centre, (low + high) / 2)
        assert bool(((points - centre[:, None]).norm(dim=-1) <= radius[:, None] * (1 + 1e-6)).all())
    with pytest.raises(ValueError, match="points must have shape"):
        bounding_sphere(torch.zeros(2, 0, 3, dtype=dtype, device=device), "warp")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rigid_transform_matches_matmul(device, dtype):
    """The Warp light-view transform equals torch's ``(p - eye) @ M^T`` forward and backward (random
    upstream gradients), and passes a float64 gradcheck."""
    gen = torch.Generator().manual_seed(5)
    points, eye, matrix = (
        torch.randn(*s, generator=gen, dtype=dtype) for s in ((3, 40, 3), (3, 3), (3, 3, 3))
    )
    up = torch.randn(3, 40, 3, generator=gen, dtype=dtype)
    results = []
    for fn in (rigid_transform, lambda p, e, m: (p - e[:, None]) @ m.transpose(1, 2)):
        leaves = [t.to(device).requires_grad_() for t in (points, eye, matrix)]
        out = fn(*leaves)
        (out * up.to(device)).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, expected in zip(*results):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))
    if dtype == torch.float64:
        small = [t.to(device).requires_grad_() for t in (points[:2, :4], eye[:2], matrix[:2])]
        assert torch.autograd.gradcheck(rigid_transform, small)
    with pytest.raises(ValueError, match="eye must have shape"):
        rigid_transform(points, eye[:2], matrix)
