"""The rasterizer's indexed form (per-vertex inputs, corners read through the faces) against the torch
twin on the gathered corners, the per-face Warp call, finite differences, and the projection twins."""

from __future__ import annotations

import pytest
import torch

import warp_kernels.raster as raster
from harp_kaolin.render.camera import Camera, face_inputs, vertex_inputs
from tests.conftest import DEVICES
from tests.test_raster import EDGE_MARGIN, edge_distance_np, pixel_centres_np
from warp_kernels.reference import dibr_rasterization as torch_dibr

FORWARD_TOL = 1e-5  # barycentrics and soft mask against the twin (float32)
GRAD_RTOL = 1e-4  # gradients against the twin, relative to the largest entry (float32)
SUM_RTOL = 1e-5  # per-vertex sums against the per-face call's corner gradients summed (rounding order)


def random_mesh(batch=2, points=30, faces=60, seed=0, dtype=torch.float32, device="cpu", spread=0.35):
    """Random triangles on shared vertices (each vertex in several faces), both windings, random depths
    and facing flags; an unused vertex at the end."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, 1, 2, generator=g) * 0.6 - 0.3
    image = centre + spread * torch.randn(batch, points, 2, generator=g)
    z = torch.rand(batch, points, generator=g) - 2
    index = torch.stack([torch.randperm(points - 1, generator=g)[:3] for _ in range(faces)]).to(torch.int32)
    fnz = torch.randn(batch, faces, generator=g)
    cast = {"dtype": dtype, "device": device}
    return z.to(**cast), image.to(**cast), index.to(device), fnz.to(**cast)


def gathered(z, image, faces):
    """The per-face (Kaolin) arguments of a per-vertex mesh: corners gathered at the faces (autograd sums
    their gradients back per vertex)."""
    f = faces.long()
    return z[:, f], image[:, f]


def identity_corners(batch, faces, like):
    return torch.eye(3, dtype=like.dtype, device=like.device).expand(batch, faces, 3, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sequential", [True, False], ids=["in-order", "order-independent"])
@pytest.mark.parametrize("height,width,knum,boxlen", [(29, 37, 4, 0.1), (32, 32, 30, 0.02)])
def test_indexed_matches_twin_and_per_face_call(device, sequential, height, width, knum, boxlen, monkeypatch):
    monkeypatch.setattr(raster, "SEQUENTIAL_CPU", sequential)
    z, image, faces, fnz = random_mesh(device=device)
    batch, count = fnz.shape
    g = torch.Generator().manual_seed(5)
    up_soft = torch.randn(batch, height, width, generator=g).to(device)
    options = {"knum": knum, "boxlen": boxlen}

    vi = image.clone().requires_grad_()
    bary, soft, face_idx, flat = raster.dibr_rasterization_indexed(
        height, width, z, vi, faces, fnz, **options
    )
    up_bary = torch.randn(bary.shape, generator=g).to(device)
    ((bary * up_bary).sum() + (soft * up_soft).sum()).backward()

    # the twin on the gathered corners: dense features, gathered at the covered pixels
    ti = image.clone().requires_grad_()
    fvz, fvi = gathered(z, ti, faces)
    t_out, t_soft, t_idx = torch_dibr(
        height, width, fvz, fvi, identity_corners(batch, count, z), fnz, **options
    )
    assert torch.equal(face_idx, t_idx)
    t_flat = (t_idx.reshape(-1) >= 0).nonzero()[:, 0]
    assert torch.equal(flat, t_flat) and 0.1 < flat.numel() / t_idx.numel() < 0.9
    t_bary = t_out.reshape(-1, 3)[t_flat]
    torch.testing.assert_close(bary, t_bary, atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(soft, t_soft, atol=FORWARD_TOL, rtol=0)
    assert ((soft > 0.01) & (soft < 0.99)).any()
    ((t_bary * up_bary).sum() + (t_soft * up_soft).sum()).backward()
    assert ti.grad.abs().max() > 0 and torch.equal(vi.grad[:, -1], torch.zeros_like(vi.grad[:, -1]))
    torch.testing.assert_close(vi.grad, ti.grad, rtol=0, atol=GRAD_RTOL * float(ti.grad.abs().max()))

    # the per-face Warp call: the same bits forward, the same gradients summed per vertex up to rounding
    pi = image.clone().requires_grad_()
    fvz, fvi = gathered(z, pi, faces)
    p_bary, p_soft, p_idx, p_flat = raster.dibr_rasterization_packed(
        height, width, fvz, fvi, identity_corners(batch, count, z), fnz, **options
    )
    for a, b in ((bary, p_bary), (soft, p_soft), (face_idx, p_idx), (flat, p_flat)):
        assert torch.equal(a, b)
    ((p_bary * up_bary).sum() + (p_soft * up_soft).sum()).backward()
    torch.testing.assert_close(vi.grad, pi.grad, rtol=0, atol=SUM_RTOL * float(pi.grad.abs().max()))


def test_indexed_gradcheck_float64():
    """Two front triangles sharing an edge and a back triangle sharing a vertex, no pixel centre near an
    edge (coverage changes there): the op is smooth in the vertices."""
    image = torch.tensor(
        [[[-0.63, -0.52], [0.41, -0.37], [-0.18, 0.58], [0.62, 0.49], [-0.86, 0.12], [-0.21, -0.83]]],
        dtype=torch.float64,
    )
    z = torch.tensor([[-1.0, -1.2, -0.9, -0.8, -1.5, -1.4]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 0]], dtype=torch.int32)
    fnz = torch.tensor([[1.0, 0.5, -1.0]], dtype=torch.float64)
    height, width = 11, 13
    x, y = pixel_centres_np(height, width)
    for tri in image[0, faces.long()].numpy():
        assert edge_distance_np(tri, x, y).min() > EDGE_MARGIN

    def fn(vi):
        bary, soft, _, _ = raster.dibr_rasterization_indexed(
            height, width, z, vi, faces, fnz, sigmainv=300, boxlen=0.3, knum=3
        )
        return bary, soft

    assert torch.autograd.gradcheck(fn, (image.clone().requires_grad_(),), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_depth_map_indexed_matches_per_face_and_twin(device, two_threads):
    z, image, faces, fnz = random_mesh(batch=3, seed=7, device=device)
    empty = torch.tensor([5.0, -2.0, 0.5], device=device)
    upstream = torch.randn(3, 27, 31, generator=torch.Generator().manual_seed(8)).to(device)
    results = []
    for form in ("indexed", "per-face", "twin"):
        zz, vi = z.clone().requires_grad_(), image.clone().requires_grad_()
        if form == "indexed":
            out = raster.depth_map_indexed(27, 31, zz, vi, faces, fnz, empty, scale=-1.0)
        else:
            fvz, fvi = gathered(zz, vi, faces)
            if form == "per-face":
                out = raster.depth_map(27, 31, fvz, fvi, fvz, fnz, empty, scale=-1.0)
            else:
                dense, _, idx = torch_dibr(27, 31, fvz.detach(), fvi, fvz[..., None], fnz, soft_mask=False)
                out = torch.where(idx >= 0, -dense[..., 0], empty[:, None, None].expand(-1, 27, 31))
        (out * upstream).sum().backward()
        results.append((out, vi.grad, zz.grad))
    (got, g_vi, g_z), (face_out, f_vi, f_z), (twin, t_vi, t_z) = results
    assert (got == empty[:, None, None]).float().mean() > 0.1 and (got != empty[:, None, None]).any()
    assert torch.equal(got, face_out)
    torch.testing.assert_close(got, twin, atol=FORWARD_TOL, rtol=0)
    for grad, per_face, reference in ((g_vi, f_vi, t_vi), (g_z, f_z, t_z)):
        assert reference.abs().max() > 0
        torch.testing.assert_close(grad, per_face, rtol=0, atol=SUM_RTOL * float(per_face.abs().max()))
        torch.testing.assert_close(grad, reference, rtol=0, atol=GRAD_RTOL * float(reference.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertex_inputs_warp_matches_torch(dtype, two_threads):
    """The Warp projection has the torch function's bits (the facing cosine to rounding, with its sign),
    the same gradients (items split over two threads), and gathered at the faces the inputs are
    ``face_inputs``."""
    camera = Camera(64, 48, 70.0, 72.0, 31.5, 24.0)
    g = torch.Generator().manual_seed(4)
    points = (torch.randn(3, 25, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, 0.4])).to(dtype)
    faces = torch.stack([torch.randperm(25, generator=g)[:3] for _ in range(30)])
    up_z, up_ndc = torch.randn(3, 25, generator=g).to(dtype), torch.randn(3, 25, 2, generator=g).to(dtype)
    results = []
    for backend in ("warp", "torch"):
        p = points.clone().requires_grad_()
        z, ndc, fnz = vertex_inputs(p, faces, camera, backend)
        ((z * up_z).sum() + (ndc * up_ndc).sum()).backward()
        results.append((z.detach(), ndc.detach(), fnz, p.grad))
    (wz, wndc, wfnz, wgrad), (tz, tndc, tfnz, tgrad) = results
    assert torch.equal(wz, tz) and torch.equal(wndc, tndc)
    torch.testing.assert_close(wfnz, tfnz, atol=1e-6, rtol=1e-6)
    assert torch.equal(wfnz >= 0, tfnz >= 0) and (tfnz < 0).any() and (tfnz > 0).any()
    torch.testing.assert_close(wgrad, tgrad, atol=1e-5, rtol=1e-5)
    fvz, fvi, fnz = face_inputs(points, faces, camera, "torch")
    assert torch.equal(fvz, tz[:, faces]) and torch.equal(fvi, tndc[:, faces]) and torch.equal(fnz, tfnz)


def test_indexed_inputs_are_checked_and_named():
    z, image, faces, fnz = random_mesh()
    call = raster.dibr_rasterization_indexed
    with pytest.raises(ValueError, match="faces must be an \\(F, 3\\) int32"):
        call(8, 8, z, image, faces.long(), fnz)
    with pytest.raises(ValueError, match="faces must index the 30 vertices"):
        call(8, 8, z, image, torch.full_like(faces, 30), fnz)
    with pytest.raises(ValueError, match="faces must index"):
        call(8, 8, z, image, faces - 1, fnz)
    with pytest.raises(ValueError, match="vertices_image must have shape \\(B, V, 2\\)"):
        call(8, 8, z, image[..., :1], faces, fnz)
    with pytest.raises(ValueError, match="vertices_z must have shape \\(2, 30\\)"):
        call(8, 8, z[:, :-1], image, faces, fnz)
    with pytest.raises(ValueError, match="face_normals_z must have shape \\(2, 60\\)"):
        call(8, 8, z, image, faces, fnz[:, :-1])
    with pytest.raises(ValueError, match="vertices_z must have the dtype"):
        call(8, 8, z.double(), image, faces, fnz)
    with pytest.raises(ValueError, match="height must be a positive int"):
        call(0, 8, z, image, faces, fnz)
    with pytest.raises(ValueError, match="empty must be a tensor of shape \\(2,\\)"):
        raster.depth_map_indexed(8, 8, z, image, faces, fnz, torch.zeros(3))
