"""DIB-R rasterization: Warp kernels vs the pure-torch twin, gradients, analytic cases, backends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import warp as wp

import warp_kernels.raster as raster
from harp_kaolin.render import RasterOutput, rasterize
from tests.conftest import DEVICES
from warp_kernels import parallel
from warp_kernels.raster import dibr_rasterization as warp_dibr
from warp_kernels.reference import dibr_rasterization as torch_dibr

FORWARD_TOL = 1e-5  # features and soft mask, Warp vs twin (float32)
GRAD_RTOL = 1e-4  # gradients, Warp vs twin, relative to the largest gradient entry (float32)
GRADCHECK_ATOL = 1e-5  # float64 finite differences
GRADCHECK_RTOL = 1e-3
EDGE_MARGIN = 1e-3  # analytic scenes keep pixel centres this far (NDC) from every edge
IOU_AFTER = 0.85  # silhouette fit: IoU the optimized triangle must reach
IOU_GAIN = 0.2  # ... and its improvement over the start

# (height, width, knum, boxlen): odd sizes, a truncating knum and Kaolin's defaults
RANDOM_CASES = [(29, 37, 4, 0.1), (32, 32, 30, 0.02)]


def random_scene(batch=2, faces=40, dims=(3,), seed=0, dtype=torch.float32, device="cpu", size=0.3):
    """Random overlapping triangles of both windings, random depths and front/back flags."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, faces, 1, 2, generator=g) * 1.6 - 0.8
    fvi = centre + size * torch.randn(batch, faces, 3, 2, generator=g)
    fvz = torch.rand(batch, faces, 3, generator=g) - 2
    fnz = torch.randn(batch, faces, generator=g)
    feats = [torch.rand(batch, faces, 3, d, generator=g) for d in dims]
    cast = {"dtype": dtype, "device": device}
    return fvz.to(**cast), fvi.to(**cast), [f.to(**cast) for f in feats], fnz.to(**cast)


def pixel_centres_np(height, width):
    """(H, W) NDC pixel centres x, y (float64), written independently of the kernels."""
    j, i = np.meshgrid(np.arange(width), np.arange(height))
    return (2 * j + 1 - width) / width, (height - 2 * i - 1) / height


def inside_np(tri, x, y):
    """Half-plane test of points against a triangle (3, 2), either winding (float64)."""
    cross = [
        (tri[(k + 1) % 3, 0] - tri[k, 0]) * (y - tri[k, 1])
        - (tri[(k + 1) % 3, 1] - tri[k, 1]) * (x - tri[k, 0])
        for k in range(3)
    ]
    return np.all([c > 0 for c in cross], axis=0) | np.all([c < 0 for c in cross], axis=0)


def edge_distance_np(tri, x, y):
    """Distance of points to the triangle's edges (float64)."""
    best = np.full(np.shape(x), np.inf)
    for k in range(3):
        a, b = tri[k], tri[(k + 1) % 3]
        d = b - a
        t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / (d @ d), 0, 1)
        best = np.minimum(best, np.hypot(x - a[0] - t * d[0], y - a[1] - t * d[1]))
    return best


@wp.kernel
def _first_at_least_kernel(
    centres: wp.array(dtype=Any), values: wp.array(dtype=Any), scale: Any, out: wp.array(dtype=wp.int32)
):
    i = wp.tid()
    out[i] = raster._first_at_least(centres, values[i], type(scale)(1.0) / scale)


parallel.declare_float_overloads(globals())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [7, 448, 8192])
def test_first_pixel_centre_at_least_a_value(dtype, size):
    """``_first_at_least`` (the first pixel centre >= a coordinate, from an estimate that reads the
    centres only near a centre) against torch.searchsorted on the same centres: at every centre, one
    ulp either side, 0.005 and 0.02 of a pixel either side, past both ends, and at random."""
    multiplier = 1000.0
    xs = raster.pixel_centres(4, size, multiplier, dtype, "cpu")[0]
    ulp = torch.finfo(dtype).eps * xs.abs().clamp_min(1.0)
    pixel = 2 * multiplier / size
    near = [xs, xs + ulp, xs - ulp, torch.nextafter(xs, xs + 1), torch.nextafter(xs, xs - 1)]
    near += [xs + f * pixel for f in (0.005, -0.005, 0.02, -0.02, 0.5)]
    g = torch.Generator().manual_seed(size)
    spread = (torch.rand(4096, generator=g, dtype=torch.float64) * 2.4 - 1.2) * multiplier
    values = torch.cat([*near, spread.to(dtype), torch.tensor([-2e3, 2e3, xs[0], xs[-1]], dtype=dtype)])
    out = torch.empty(values.shape[0], dtype=torch.int32)
    scale = parallel.scalar(dtype, multiplier / size)
    parallel.launch_tensors(_first_at_least_kernel, values.shape[0], [xs, values, scale, out], values.device)
    expected = torch.searchsorted(xs, values, side="left")
    wrong = out.long() != expected
    got, want = out[wrong][:5].tolist(), expected[wrong][:5].tolist()
    assert not wrong.any(), f"values {values[wrong][:5].tolist()}: {got}, not {want}"


def run_both(height, width, scene, **kwargs):
    fvz, fvi, feats, fnz = scene
    return [fn(height, width, fvz, fvi, feats, fnz, **kwargs) for fn in (warp_dibr, torch_dibr)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height,width,knum,boxlen", RANDOM_CASES)
def test_forward_matches_twin(device, height, width, knum, boxlen, cpu_chunk):
    scene = random_scene(dims=(3, 2), device=device)
    (wf, ws, wi), (tf, ts, ti) = run_both(height, width, scene, knum=knum, boxlen=boxlen)
    assert isinstance(wf, list) and [f.shape[-1] for f in wf] == [3, 2]
    assert wi.dtype == torch.int64 and wi.shape == (2, height, width)
    assert torch.equal(wi, ti)
    assert 0.1 < (wi >= 0).float().mean() < 0.9  # the scene has both covered and background pixels
    for a, b in zip(wf, tf):
        torch.testing.assert_close(a, b, atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(ws, ts, atol=FORWARD_TOL, rtol=0)
    assert torch.all(ws[wi >= 0] == 1) and torch.all(wf[0][wi < 0] == 0)
    assert ((ws > 0.01) & (ws < 0.99)).any()  # a real soft border exists


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height,width,knum,boxlen", RANDOM_CASES)
def test_backward_matches_twin(device, height, width, knum, boxlen, cpu_chunk):
    fvz, fvi, feats, fnz = random_scene(dims=(4,), device=device, seed=1)
    g = torch.Generator().manual_seed(2)
    up_feat = torch.randn(2, height, width, 4, generator=g).to(device)
    up_soft = torch.randn(2, height, width, generator=g).to(device)
    grads = []
    for fn in (warp_dibr, torch_dibr):
        vi, ff = fvi.clone().requires_grad_(), feats[0].clone().requires_grad_()
        out, soft, _ = fn(height, width, fvz, vi, ff, fnz, knum=knum, boxlen=boxlen)
        ((out * up_feat).sum() + (soft * up_soft).sum()).backward()
        grads.append((vi.grad, ff.grad))
    for a, b in zip(*grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=GRAD_RTOL * float(b.abs().max()))


def test_order_independent_path_matches_sequential(monkeypatch):
    """The CUDA algorithm (two depth passes, full candidate lists sorted per pixel), run on CPU, gives
    exactly what the CPU's in-order algorithm gives; the gradients up to float32 rounding (the CPU sums
    the soft-mask terms face by face, the CUDA path pixel by pixel)."""
    fvz, fvi, feats, fnz = random_scene(batch=3, faces=60, seed=3)
    results = []
    for sequential in (True, False):
        monkeypatch.setattr(raster, "SEQUENTIAL_CPU", sequential)
        vi = fvi.clone().requires_grad_()
        out, soft, idx = warp_dibr(31, 33, fvz, vi, feats, fnz, knum=3, boxlen=0.1)
        (out[0].sum() + soft.square().sum()).backward()
        results.append((out[0], soft, idx, vi.grad))
    for a, b in zip(results[0][:3], results[1][:3]):
        assert torch.equal(a, b)
    grad_seq, grad_lists = results[0][3], results[1][3]
    assert grad_lists.abs().max() > 0
    torch.testing.assert_close(grad_seq, grad_lists, rtol=0, atol=1e-6 * float(grad_lists.abs().max()))


@pytest.mark.parametrize("fn", [warp_dibr, torch_dibr], ids=["warp", "torch"])
@pytest.mark.parametrize("batch,faces,dim", [(2, 0, 3), (0, 4, 3), (2, 4, 0)])
def test_empty_inputs(fn, batch, faces, dim):
    fvz, fvi, feats, fnz = random_scene(batch=batch, faces=faces, dims=(dim,))
    vi = fvi.clone().requires_grad_()
    out, soft, idx = fn(8, 9, fvz, vi, feats[0], fnz)
    assert out.shape == (batch, 8, 9, dim) and soft.shape == idx.shape == (batch, 8, 9)
    (out.sum() + soft.sum()).backward()
    assert vi.grad.shape == vi.shape


def test_batch_split_over_threads_matches_one_thread():
    fvz, fvi, feats, fnz = random_scene(batch=5, seed=4)
    threads = torch.get_num_threads()
    results = []
    try:
        for forward_threads, backward_threads in ((1, 1), (3, 2)):
            torch.set_num_threads(forward_threads)
            vi = fvi.clone().requires_grad_()
            out, soft, idx = warp_dibr(20, 24, fvz, vi, feats, fnz)
            torch.set_num_threads(backward_threads)  # backward reuses the forward's batch split
            (out[0].sum() + soft.sum()).backward()
            results.append((out[0], soft, idx, vi.grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft_mask", [True, False])
def test_packed_matches_dense_twin(device, soft_mask):
    """Packed features (Warp, without a dense image) = the twin's dense features gathered at the covered
    pixels, in value and in gradient (random upstream gradients on features and soft mask)."""
    fvz, fvi, feats, fnz = random_scene(batch=3, dims=(4,), device=device, seed=5)
    height, width = 27, 31
    g = torch.Generator().manual_seed(6)
    results = []
    for packed in (True, False):
        vi, ff = fvi.clone().requires_grad_(), feats[0].clone().requires_grad_()
        args = (height, width, fvz, vi, ff, fnz)
        if packed:
            out, soft, idx, flat = raster.dibr_rasterization_packed(*args, knum=5, soft_mask=soft_mask)
        else:
            dense, soft, idx = torch_dibr(*args, knum=5, soft_mask=soft_mask)
            flat = (idx.reshape(-1) >= 0).nonzero()[:, 0]
            out = dense.reshape(-1, 4)[flat]
        up_feat = torch.randn(out.shape, generator=g.manual_seed(7)).to(device)
        up_soft = torch.randn(soft.shape, generator=g.manual_seed(8)).to(device)
        loss = (out * up_feat).sum() + ((soft * up_soft).sum() if soft_mask else 0)
        loss.backward()
        results.append((out, soft, idx, flat, vi.grad, ff.grad))
    (out, soft, idx, flat, g_vi, g_ff), (t_out, t_soft, t_idx, t_flat, t_vi, t_ff) = results
    assert flat.dtype == torch.int64 and torch.equal(flat, t_flat) and torch.equal(idx, t_idx)
    assert 0 < flat.shape[0] < idx.numel()
    torch.testing.assert_close(out, t_out, atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(soft, t_soft, atol=FORWARD_TOL, rtol=0)
    if not soft_mask:
        assert torch.equal(soft, (idx >= 0).to(soft.dtype))  # the hard coverage
    for a, b in ((g_vi, t_vi), (g_ff, t_ff)):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=GRAD_RTOL * float(b.abs().max()))


@pytest.mark.parametrize("fn", [warp_dibr, torch_dibr], ids=["warp", "torch"])
def test_without_soft_mask_features_are_unchanged(fn):
    """soft_mask=False changes only the soft mask (hard coverage, no gradient), not the features."""
    fvz, fvi, feats, fnz = random_scene(batch=2, seed=9)
    outs = [fn(23, 19, fvz, fvi, feats[0], fnz, soft_mask=soft) for soft in (True, False)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][2], outs[1][2])
    assert torch.equal(outs[1][1], (outs[1][2] >= 0).to(fvi.dtype))
    assert ((outs[0][1] > 0) & (outs[0][2] < 0)).any()  # the soft mask did reach uncovered pixels


@pytest.mark.parametrize("sequential", [True, False], ids=["in-order", "order-independent"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_faces_in_part_of_the_image(monkeypatch, sequential, packed):
    """Faces in one corner of each image (a different corner per item, so the window of faces is smaller
    than the image): the dense outputs are the twin's everywhere, also where given buffers held other
    values and no face is near, and so are the gradients."""
    monkeypatch.setattr(raster, "SEQUENTIAL_CPU", sequential)
    fvz, fvi, feats, fnz = random_scene(batch=2, faces=12, dims=(2,), seed=13, size=0.5)
    corner = torch.tensor([[[[-0.5, 0.5]]], [[[-0.3, 0.2]]]])
    fvi = (0.3 * fvi + corner).contiguous()  # each item's faces around its own point
    height, width, knum, boxlen = 33, 29, 4, 0.08
    g = torch.Generator().manual_seed(14)
    up_feat = torch.randn(2, height, width, 2, generator=g)
    up_soft = torch.randn(2, height, width, generator=g)
    results = []
    for fn in ("warp", "torch"):
        vi, ff = fvi.clone().requires_grad_(), feats[0].clone().requires_grad_()
        args = (height, width, fvz, vi, ff, fnz)
        if fn == "torch":
            dense, soft, idx = torch_dibr(*args, knum=knum, boxlen=boxlen)
        elif packed:
            junk = (torch.full((2, height, width), 0.5), torch.full((2, height, width), 3, dtype=torch.int64))
            out, soft, idx, flat = raster.dibr_rasterization_packed(*args, knum=knum, boxlen=boxlen, out=junk)
            dense = torch.zeros(2 * height * width, 2).index_put((flat,), out).reshape(2, height, width, 2)
        else:
            dense, soft, idx = warp_dibr(*args, knum=knum, boxlen=boxlen)
        ((dense * up_feat).sum() + (soft * up_soft).sum()).backward()
        results.append((dense, soft, idx, vi.grad, ff.grad))
    (dense, soft, idx, g_vi, g_ff), (t_dense, t_soft, t_idx, t_vi, t_ff) = results
    assert torch.equal(idx, t_idx)
    torch.testing.assert_close(dense, t_dense, atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(soft, t_soft, atol=FORWARD_TOL, rtol=0)
    # the scene: covered pixels, a soft border, and a far corner of every image untouched by any face
    assert (idx >= 0).any() and ((soft > 0) & (soft < 1)).any()
    assert torch.all(soft[:, -8:, -8:] == 0) and torch.all(idx[:, -8:, -8:] == -1)
    for a, b in ((g_vi, t_vi), (g_ff, t_ff)):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=GRAD_RTOL * float(b.abs().max()))


def test_packed_writes_into_given_buffers():
    """``out=(soft_mask, face_idx)``: the outputs are those buffers (views of a larger batch's here), with
    the values and gradients of a call without them; wrong buffers are refused, naming what is wrong."""
    fvz, fvi, feats, fnz = random_scene(batch=2, dims=(3,), seed=11)
    height, width = 21, 17
    args = (height, width, fvz, fvi.clone().requires_grad_(), feats[0], fnz)
    plain = raster.dibr_rasterization_packed(*args, knum=5)
    soft, idx = torch.full((3, height, width), 7.0), torch.full((3, height, width), 7, dtype=torch.int64)
    got = raster.dibr_rasterization_packed(*args, knum=5, out=(soft[1:], idx[1:]))
    assert got[1].data_ptr() == soft[1:].data_ptr() and got[2].data_ptr() == idx[1:].data_ptr()
    assert torch.equal(soft[0], torch.full((height, width), 7.0)) and torch.equal(idx[1:], plain[2])
    for a, b in zip(got, plain):
        assert torch.equal(a, b)
    up = torch.randn(plain[1].shape, generator=torch.Generator().manual_seed(12))
    grads = [torch.autograd.grad((o[1] * up).sum() + o[0].sum(), args[3]) for o in (plain, got)]
    assert torch.equal(grads[0][0], grads[1][0]) and grads[0][0].abs().sum() > 0
    with pytest.raises(ValueError, match="out soft_mask must be a"):
        raster.dibr_rasterization_packed(*args, out=(soft, idx[1:]))
    with pytest.raises(ValueError, match="out face_idx must be a"):
        raster.dibr_rasterization_packed(*args, out=(soft[1:], idx[1:].int()))
    with pytest.raises(ValueError, match="contiguous"):
        raster.dibr_rasterization_packed(*args, out=(soft[1:], idx[1:].transpose(1, 2).contiguous().mT))
    with pytest.raises(ValueError, match="pair"):
        raster.dibr_rasterization_packed(*args, out=soft[1:])


def test_packed_gradcheck_float64():
    fvz, fvi, feats, fnz = tiny_mesh()

    def render(vi, ff):
        out, soft, _, _ = raster.dibr_rasterization_packed(11, 13, fvz, vi, ff, fnz, sigmainv=300, boxlen=0.3)
        return out, soft

    inputs = (fvi.clone().requires_grad_(), feats.clone().requires_grad_())
    assert torch.autograd.gradcheck(render, inputs, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def tiny_mesh(dtype=torch.float64):
    """Two front triangles and one back triangle, chosen so no pixel centre is near an edge."""
    fvi = torch.tensor(
        [[[[-0.63, -0.52], [0.41, -0.37], [-0.18, 0.58]],
          [[0.12, 0.08], [0.71, 0.22], [0.33, 0.69]],
          [[-0.52, 0.23], [-0.77, -0.31], [-0.21, -0.71]]]],
        dtype=dtype,
    )  # fmt: skip
    fvz = torch.tensor([[[-1.0, -1.2, -0.9], [-0.8, -0.7, -0.75], [-1.5, -1.4, -1.3]]], dtype=dtype)
    fnz = torch.tensor([[1.0, 0.5, -1.0]], dtype=dtype)
    feats = torch.linspace(-1, 1, 3 * 3 * 2, dtype=dtype).reshape(1, 3, 3, 2).sin()
    return fvz, fvi, feats, fnz


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [warp_dibr, torch_dibr], ids=["warp", "torch"])
def test_gradcheck_float64(device, fn):
    fvz, fvi, feats, fnz = (t.to(device) for t in tiny_mesh())
    height, width = 11, 13
    x, y = pixel_centres_np(height, width)
    for tri in fvi[0].cpu().numpy():  # the op is smooth only away from edges (coverage changes there)
        assert edge_distance_np(tri, x, y).min() > EDGE_MARGIN

    def render(vi, ff):
        out, soft, _ = fn(height, width, fvz, vi, ff, fnz, sigmainv=300, boxlen=0.3, knum=3)
        return out, soft

    inputs = (fvi.clone().requires_grad_(), feats.clone().requires_grad_())
    assert torch.autograd.gradcheck(render, inputs, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flip", [False, True], ids=["ccw", "cw"])
def test_triangle_covers_exactly_the_pixel_centres_inside(device, flip):
    height, width = 23, 31
    tri = np.array([[-0.74, -0.61], [0.81, -0.26], [-0.06, 0.78]])
    tri = tri[::-1].copy() if flip else tri
    x, y = pixel_centres_np(height, width)
    assert edge_distance_np(tri, x, y).min() > EDGE_MARGIN
    fvi = torch.tensor(tri, dtype=torch.float32, device=device).reshape(1, 1, 3, 2)
    fvz = torch.full((1, 1, 3), -1.0, device=device)
    feats = torch.ones(1, 1, 3, 1, device=device)
    out = rasterize(height, width, fvz, fvi, feats, torch.ones(1, 1, device=device))
    expected = inside_np(tri, x, y)
    assert expected.sum() > 50
    np.testing.assert_array_equal(out.face_idx[0].cpu().numpy() >= 0, expected)
    torch.testing.assert_close(
        out.features[0, ..., 0], torch.as_tensor(expected, dtype=torch.float32, device=device)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_back_faces_are_culled_but_shape_the_soft_mask(device):
    height, width = 24, 24
    tri = [[-0.6, -0.5], [0.6, -0.4], [0.0, 0.6]]
    fvi = torch.tensor(tri, device=device).reshape(1, 1, 3, 2)
    fvz = torch.full((1, 1, 3), -1.0, device=device)
    feats = torch.ones(1, 1, 3, 2, device=device)
    back = rasterize(height, width, fvz, fvi, feats, torch.full((1, 1), -0.5, device=device), boxlen=0.1)
    front = rasterize(height, width, fvz, fvi, feats, torch.full((1, 1), 0.0, device=device), boxlen=0.1)
    assert torch.all(back.face_idx == -1) and torch.all(back.features == 0)
    assert (front.face_idx == 0).sum() > 50  # face_normals_z == 0 is still drawn
    # As in Kaolin, every face (back faces too) feeds the soft mask of uncovered pixels.
    x, y = pixel_centres_np(height, width)
    d = torch.as_tensor(edge_distance_np(np.array(tri), x, y), dtype=torch.float32, device=device)
    boxed = torch.as_tensor(
        (x >= -0.7) & (x < 0.7) & (y >= -0.6) & (y < 0.7), device=device
    )  # the face's box grown by boxlen
    expected = torch.where(boxed, torch.exp(-7000 * d.square()), torch.zeros_like(d))
    torch.testing.assert_close(back.soft_mask[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_largest_z_wins_then_lowest_index(device, backend):
    big = [[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]]
    small = [[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]]
    fvi = torch.tensor([big, small, small], device=device)[None]
    feats = torch.arange(3.0, device=device).reshape(1, 3, 1, 1).expand(1, 3, 3, 1)
    fnz = torch.ones(1, 3, device=device)
    centre = (8, 8)  # a pixel inside all three faces
    for near, expected in ((0, 0), (1, 1), (2, 2)):
        z = torch.full((1, 3, 3), -2.0, device=device)
        z[0, near] = -1.0  # larger z = nearer the camera
        out = rasterize(16, 16, z, fvi, feats, fnz, backend=backend)
        assert out.face_idx[0, centre[0], centre[1]] == expected
        assert out.features[0, centre[0], centre[1], 0] == expected
    tie = rasterize(16, 16, torch.full((1, 3, 3), -1.0, device=device), fvi, feats, fnz, backend=backend)
    assert tie.face_idx[0, centre[0], centre[1]] == 0


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_silhouette_l1_moves_triangle_onto_target():
    height = width = 48
    target_tri = torch.tensor([[[[-0.55, -0.45], [0.6, -0.3], [0.05, 0.65]]]])
    start_tri = target_tri * 0.7 + torch.tensor([0.2, -0.15])
    fvz, fnz = torch.full((1, 1, 3), -1.0), torch.ones(1, 1)
    feats = torch.zeros(1, 1, 3, 1)
    options = {"sigmainv": 2000, "boxlen": 0.1}
    target = rasterize(height, width, fvz, target_tri, feats, fnz, **options).face_idx >= 0
    verts = start_tri.clone().requires_grad_()
    before = iou(rasterize(height, width, fvz, verts.detach(), feats, fnz, **options).face_idx >= 0, target)
    optimizer = torch.optim.Adam([verts], lr=0.01)
    for _ in range(80):
        optimizer.zero_grad()
        soft = rasterize(height, width, fvz, verts, feats, fnz, **options).soft_mask
        (soft - target.float()).abs().mean().backward()
        optimizer.step()
    after = iou(rasterize(height, width, fvz, verts.detach(), feats, fnz, **options).face_idx >= 0, target)
    assert after > IOU_AFTER and after - before > IOU_GAIN, (before, after)


def test_inputs_are_checked_and_named():
    fvz, fvi, feats, fnz = random_scene(batch=1, faces=3)
    with pytest.raises(ValueError, match="face_vertices_image must have shape"):
        warp_dibr(8, 8, fvz, fvi[..., :1], feats, fnz)
    with pytest.raises(ValueError, match="face_normals_z must have shape"):
        rasterize(8, 8, fvz, fvi, feats, fnz[:, :2])
    with pytest.raises(ValueError, match="face_features must have"):
        rasterize(8, 8, fvz, fvi, feats[0].double(), fnz)
    with pytest.raises(ValueError, match="height must be a positive int"):
        rasterize(0, 8, fvz, fvi, feats, fnz)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize(8, 8, fvz, fvi, feats, fnz, backend="opengl")
    with pytest.raises(ValueError, match="unknown DIB-R arguments"):
        rasterize(8, 8, fvz, fvi, feats, fnz, sigma=1.0)


def test_raster_output_unpacks_like_kaolin():
    fvz, fvi, feats, fnz = random_scene(batch=1, faces=5)
    out = rasterize(10, 12, fvz, fvi, feats[0], fnz)
    assert isinstance(out, RasterOutput)
    features, soft_mask, face_idx = out
    assert (
        features.shape == (1, 10, 12, 3) and soft_mask.shape == (1, 10, 12) and face_idx.shape == (1, 10, 12)
    )


def _real_kaolin_with_cuda() -> str | None:
    """Why Kaolin parity cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "Kaolin parity needs CUDA: Kaolin's DIB-R has no CPU path"
    try:
        from kaolin.render.mesh import dibr_rasterization  # noqa: F401
    except (ImportError, OSError) as err:
        return f"needs a real NVIDIA Kaolin with CUDA ({err})"
    return None


def test_kaolin_backend_explains_what_is_missing():
    fvz, fvi, feats, fnz = random_scene(batch=1, faces=3)
    with pytest.raises(RuntimeError, match="backend='kaolin'"):
        rasterize(8, 8, fvz, fvi, feats, fnz, backend="kaolin")  # CPU tensors: never runs Kaolin


@pytest.mark.skipif(_real_kaolin_with_cuda() is not None, reason=str(_real_kaolin_with_cuda()))
def test_kaolin_parity():
    scene = random_scene(batch=2, faces=60, dims=(3,), device="cuda", seed=5)
    fvz, fvi, feats, fnz = scene
    ours, theirs = (rasterize(40, 48, fvz, fvi, feats, fnz, backend=b) for b in ("warp", "kaolin"))
    assert (ours.face_idx != theirs.face_idx).float().mean() < 1e-3  # rounding at edges only
    same = ours.face_idx == theirs.face_idx
    torch.testing.assert_close(ours.features[0][same], theirs.features[0][same], atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(ours.soft_mask[same], theirs.soft_mask[same], atol=1e-4, rtol=0)


def depth_map_twin(height, width, fvz, fvi, values, fnz, empty):
    """The pure-torch composition ``depth_map`` fuses: packed twin features scattered into a filled map."""
    out, _, face_idx = torch_dibr(height, width, fvz, fvi, values[..., None], fnz, soft_mask=False)
    filled = empty[:, None, None].expand(-1, height, width)
    return torch.where(face_idx >= 0, out[..., 0], filled)


@pytest.mark.parametrize("device", DEVICES)
def test_depth_map_matches_twin(device, cpu_chunk):
    fvz, fvi, feats, fnz = random_scene(batch=3, faces=50, dims=(1,), device=device, seed=7)
    values = feats[0][..., 0]
    empty = torch.tensor([5.0, -2.0, 0.5], device=device)
    g = torch.Generator().manual_seed(8)
    upstream = torch.randn(3, 27, 31, generator=g).to(device)
    results = []
    for fn in (raster.depth_map, depth_map_twin):
        vi, vals = fvi.clone().requires_grad_(), values.clone().requires_grad_()
        out = fn(27, 31, fvz, vi, vals, fnz, empty)
        (out * upstream).sum().backward()
        results.append((out, vi.grad, vals.grad))
    (got, g_vi, g_vals), (expected, e_vi, e_vals) = results
    assert ((got == empty[:, None, None]).float().mean() > 0.1) and (got != empty[:, None, None]).any()
    torch.testing.assert_close(got, expected, atol=FORWARD_TOL, rtol=0)
    torch.testing.assert_close(g_vi, e_vi, rtol=0, atol=GRAD_RTOL * float(e_vi.abs().max()))
    torch.testing.assert_close(g_vals, e_vals, rtol=0, atol=GRAD_RTOL * float(e_vals.abs().max()))


def test_depth_map_gradcheck_and_split():
    fvz, fvi, feats, fnz = random_scene(batch=3, faces=6, dims=(1,), dtype=torch.float64, seed=9, size=0.6)
    values = feats[0][..., 0]
    empty = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    fn = lambda vi, vals: raster.depth_map(7, 8, fvz, vi, vals, fnz, empty)  # noqa: E731
    inputs = (fvi.clone().requires_grad_(), values.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)
    threads = torch.get_num_threads()
    try:  # batch items over 2 threads give the same map and gradients as 1
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            vi = fvi.clone().requires_grad_()
            out = raster.depth_map(7, 8, fvz, vi, values, fnz, empty)
            out.square().sum().backward()
            results.append((out, vi.grad))
        for a, b in zip(*results):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("identity", [False, True], ids=["corners", "identity"])
def test_features_broadcast_over_faces_match_their_copy(two_threads, packed, identity):
    """Corner features expanded over items and faces (stride 0) are read from one copy, and the identity
    (the renderer's, giving the barycentrics) not at all: the same features, soft mask and gradients, bit
    for bit, as the contiguous (B, F, 3, D) copy, with the batch split over two threads; with a gradient
    to the features the expanded tensor gets the summed gradient of its copy."""
    fvz, fvi, _, fnz = random_scene(batch=3, faces=30, seed=12)
    corners = torch.eye(3) if identity else torch.rand(3, 2, generator=torch.Generator().manual_seed(3))
    upstream = torch.Generator().manual_seed(4)
    fn = raster.dibr_rasterization_packed if packed else raster.dibr_rasterization
    results = []
    for broadcast in (True, False):
        for needs_grad in (False, True):
            feats = corners.clone().requires_grad_(needs_grad)
            face_feats = feats.expand(3, 30, *corners.shape)
            vi = fvi.clone().requires_grad_()
            out, soft, idx, *_ = fn(
                19, 23, fvz, vi, face_feats if broadcast else face_feats.contiguous(), fnz
            )
            weights = torch.rand(out.shape, generator=upstream.manual_seed(5))
            ((out * weights).sum() + soft.square().sum()).backward()
            results.append((out, soft, idx, vi.grad, feats.grad))
    assert (results[0][2] >= 0).any()
    for broadcast, copy in zip(results[:2], results[2:]):
        for a, b in zip(broadcast, copy):
            assert (a is None and b is None) or torch.equal(a, b)
    assert results[1][4] is not None and results[1][4].abs().sum() > 0


def test_depth_map_scale_is_negation_without_a_torch_op():
    """scale=-1 gives exactly the negated map of the negated empty value, and the same gradients as a
    negation applied after it (the shadow map's depth from DIB-R's -depth z)."""
    fvz, fvi, feats, fnz = random_scene(batch=2, faces=6, dims=(1,), seed=4, size=0.6)
    values = feats[0][..., 0]
    empty = torch.tensor([1.5, 2.5])
    upstream = torch.randn(2, 9, 11, generator=torch.Generator().manual_seed(1))
    results = []
    for scaled in (True, False):
        vi, vals = fvi.clone().requires_grad_(), values.clone().requires_grad_()
        if scaled:
            out = raster.depth_map(9, 11, fvz, vi, vals, fnz, empty, scale=-1.0)
        else:
            out = -raster.depth_map(9, 11, fvz, vi, vals, fnz, -empty)
        (out * upstream).sum().backward()
        results.append((out, vi.grad, vals.grad))
    assert (results[0][0] == empty[:, None, None]).any() and (results[0][0] != empty[:, None, None]).any()
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_depth_map_of_the_depth_test_z_reads_the_z_buffer(two_threads):
    """Values that are the depth test's z itself (the shadow map's case: the same memory) are not
    interpolated again: the map is the scaled z-buffer. It equals the interpolation of a copy of them
    (another tensor: the general path) to rounding, with the same gradients, on 1 and 2 threads."""
    fvz, fvi, _, fnz = random_scene(batch=3, faces=40, seed=21, size=0.5)
    empty = torch.tensor([3.0, 4.0, 5.0])
    upstream = torch.randn(3, 21, 17, generator=torch.Generator().manual_seed(2))
    results = []
    for shared in (True, False):
        z = fvz.clone().requires_grad_()
        values = z if shared else z * 1.0  # the same memory, or a copy (still differentiable in z)
        vi = fvi.clone().requires_grad_()
        out = raster.depth_map(21, 17, z.detach(), vi, values, fnz, empty, scale=-1.0)
        (out * upstream).sum().backward()
        results.append((out, vi.grad, z.grad))
    covered = results[1][0] != empty[:, None, None]
    assert covered.float().mean() > 0.1 and (~covered).any()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=0)
    for got, expected in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_depth_map_checks_its_inputs():
    fvz, fvi, feats, fnz = random_scene(batch=2, faces=4, dims=(1,))
    with pytest.raises(ValueError, match="empty"):
        raster.depth_map(5, 5, fvz, fvi, feats[0][..., 0], fnz, torch.zeros(3))
    with pytest.raises(ValueError, match="face_values"):
        raster.depth_map(5, 5, fvz, fvi, torch.zeros(2, 4, 3, 2), fnz, torch.zeros(2))


def test_packed_order_independent_path_matches_sequential(monkeypatch):
    """The packed call lists its covered pixels in the dense pass on CPU and with nonzero() elsewhere:
    the same rows and features, and the same gradients up to float32 rounding (soft-mask terms summed
    face by face on CPU, pixel by pixel elsewhere)."""
    fvz, fvi, feats, fnz = random_scene(batch=3, faces=60, seed=11)
    results = []
    for sequential in (True, False):
        monkeypatch.setattr(raster, "SEQUENTIAL_CPU", sequential)
        vi = fvi.clone().requires_grad_()
        packed, soft, idx, flat = raster.dibr_rasterization_packed(31, 33, fvz, vi, feats[0], fnz, knum=3)
        (packed.square().sum() + soft.sum()).backward()
        results.append((packed, soft, idx, flat, vi.grad))
    assert results[0][3].shape[0] > 0
    for a, b in zip(results[0][:4], results[1][:4]):
        assert torch.equal(a, b)
    grad_seq, grad_lists = results[0][4], results[1][4]
    assert grad_lists.abs().max() > 0
    torch.testing.assert_close(grad_seq, grad_lists, rtol=0, atol=1e-6 * float(grad_lists.abs().max()))


@pytest.mark.parametrize("shared", [1, 2], ids=["one-zero-factor", "two-zero-factors"])
@pytest.mark.parametrize("sequential", [True, False], ids=["in-order", "order-independent"])
def test_soft_mask_gradient_with_zero_factors(monkeypatch, shared, sequential):
    """An uncovered pixel whose nearest face is so close that its probability rounds to 1 (a zero
    factor 1 - p in the soft-mask product): the gradient is the exact leave-one-out product (the twin's
    autograd through prod), nonzero for one zero factor and zero for two, never inf or NaN."""
    monkeypatch.setattr(raster, "SEQUENTIAL_CPU", sequential)
    # pixel (3, 4) of an 8 x 8 image has its centre at (0.125, 0.125); the corner at x + 1e-6 is
    # 1e-3 away in multiplied units: exp(-7000 / 1000^2 * 1e-6) rounds to 1 in float32
    corner = [0.125 + 1e-6, 0.125]
    tris = [[corner, [0.5, 0.3], [0.45, -0.2]], [[0.05, 0.2], [0.1, 0.3], [0.0, 0.26]]]
    if shared == 2:
        tris.append([corner, [0.4, 0.45], [0.5, 0.35]])
    fvi = torch.tensor([tris], dtype=torch.float32)
    faces = fvi.shape[1]
    fvz = torch.full((1, faces, 3), -1.0)
    fnz = torch.ones(1, faces)
    feats = torch.rand(1, faces, 3, 2, generator=torch.Generator().manual_seed(0))
    up = torch.zeros(1, 8, 8)
    up[0, 3, 4] = 1.0  # the gradient of that pixel alone
    grads = []
    for fn in (warp_dibr, torch_dibr):
        vi = fvi.clone().requires_grad_()
        _, soft, idx = fn(8, 8, fvz, vi, feats, fnz)
        assert idx[0, 3, 4] < 0 and soft[0, 3, 4] == 1.0
        (soft * up).sum().backward()
        grads.append(vi.grad)
    assert torch.isfinite(grads[0]).all()
    if shared == 2:  # every leave-one-out product holds a zero factor
        assert not grads[0].any() and not grads[1].any()
    else:  # only the zero factor's own term: d soft / d corner x = prod(other factors) * s * 2 dx
        assert grads[1][0, 0, 0, 0] != 0 and not grads[1][0, 1:].any()
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("knum", [3, 12])
def test_soft_stream_lanes_match_generic_kernel(monkeypatch, knum, cpu_chunk):
    """The float32 CPU soft stream in SIMD lanes (``_soft_stream_simd``) gives the generic kernel's soft
    mask and gradients bit for bit (the same operations, the same exp), on a scene where faces have more
    open pixels than its entry buffer (flushed mid-face), runs of 8 and remainders, and pixels capped at
    ``knum``."""
    fvz, fvi, feats, fnz = random_scene(batch=2, faces=80, seed=5, size=0.25)
    launched, streams = [], []
    launch = parallel.launch_tensors
    monkeypatch.setattr(parallel, "launch_tensors", lambda k, *a: (launched.append(k.key), launch(k, *a)))
    soft_mask = raster._soft_mask
    monkeypatch.setattr(raster, "_soft_mask", lambda *a: streams.append(soft_mask(*a)) or streams[-1])
    results = []
    for simd in (True, False):
        monkeypatch.setattr(raster, "SIMD_CPU", simd)
        launched.clear()
        vi = fvi.clone().requires_grad_()
        out, soft, idx = warp_dibr(61, 67, fvz, vi, feats, fnz, knum=knum, boxlen=0.15)
        (soft.square().sum() + out[0].sum()).backward()
        assert ("_soft_stream_simd" in launched) == simd and ("_soft_stream" in launched) != simd
        results.append((out[0], soft, idx, vi.grad))
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b)
    per_face, per_pixel = [], []
    for stream in streams[: len(streams) // 2]:  # the SIMD run's (one per thread's part of the batch)
        ends = stream.face_end.long()
        per_face.append(ends - torch.cat([ends.new_zeros(1), ends[:-1]]))
        entries = stream.cells[: int(ends[-1])].long() >> 3  # _cell: row << 15 | column
        per_pixel.append(torch.unique(entries, return_counts=True)[1])
    per_face, per_pixel = torch.cat(per_face), torch.cat(per_pixel)
    assert int(per_face.max()) > 64 and ((per_face % 8) != 0).any()
    assert int(per_pixel.max()) == knum  # pixels capped (up to 17 faces hold one pixel here)
