"""Shadow-map visibility with a 3x3 percentage-closer filter (Warp kernels, CPU and CUDA).

For each surface point seen by the main camera, transformed into the light's view (texel coordinates
``coords`` in the shadow map and light-view depth ``depth``):

    V = 1/9 * sum_{dx, dy in {-1, 0, 1}} sigmoid(s * (z_map(coords + (dx, dy)) - depth + b))

``z_map`` is read with bilinear interpolation between texel centres (border texels repeat outside the
map), so gradients reach the depth map (and through the rasterizer the occluder's vertices), the lookup
position and the point depth (and through them the receiver's vertices and the light position).
The 9 taps are whole texels apart, so they share one pair of bilinear weights (computed once per point;
the twin recomputes them per tap, equal up to float rounding). The forward keeps the 9 tap values
(N x 9) so that the adjoint needs no exp: about 3x faster backward on CPU.

Texel coordinates: x right, y down, in texel units; texel (i, j) (row i, column j) has its centre at
(j + 0.5, i + 0.5), as pixel centres in ``DESIGN.md``.

The autograd wrapper takes its device from the input tensors; Warp is initialized at the first launch,
never at import.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor

from warp_kernels import lanes, parallel

# Gradients come from a hand-written adjoint kernel (about 3x faster than Warp's generated one here).
wp.set_module_options({"enable_backward": False})


@wp.func
def _cell(x: Any, y: Any):
    """Texel column and row of the first of the bilinear pair around (x, y) (unclamped) and the weights
    of the second ones. Shifting (x, y) by whole texels shifts the pair and keeps the weights, so the 9
    PCF taps share them."""
    fx = x - type(x)(0.5)
    fy = y - type(y)(0.5)
    x0f = wp.floor(fx)
    y0f = wp.floor(fy)
    return int(x0f), int(y0f), fx - x0f, fy - y0f


@wp.func
def _sigmoid(x: Any):
    """1 / (1 + exp(-x)), finite for any x (exp only sees non-positive values) and without a branch (the
    sign of x is unpredictable across the taps, and a mispredicted branch costs more than the exp)."""
    one = type(x)(1.0)
    e = wp.exp(-wp.abs(x))
    s = one / (one + e)
    return wp.where(x >= type(x)(0.0), s, e * s)


@wp.func
def _block(depth_map: wp.array3d(dtype=Any), b: int, x0: int, y0: int):
    """The 4 x 4 texels the 9 taps read, row-major: rows y0 - 1 .. y0 + 2, columns x0 - 1 .. x0 + 2
    (clamped to the map)."""
    height = depth_map.shape[1]
    width = depth_map.shape[2]
    z = wp.vector(dtype=depth_map.dtype, length=16)
    for r in range(4):
        row = wp.clamp(y0 - 1 + r, 0, height - 1)
        for c in range(4):
            z[r * 4 + c] = depth_map[b, row, wp.clamp(x0 - 1 + c, 0, width - 1)]
    return z


@parallel.chunked
@wp.kernel
def _pcf_forward(
    depth_map: wp.array3d(dtype=Any),
    coords: wp.array2d(dtype=Any),
    depth: wp.array(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: Any,
    bias: Any,
    visibility: wp.array(dtype=Any),
    taps: wp.array2d(dtype=Any),
    items: int,
    chunk: int,
):
    """Visibility of each point; the 9 tap values go to ``taps`` (N, 9) for the adjoint (if not empty).
    The taps read a shared 4 x 4 block of texels (16 loads instead of 36)."""
    thread = wp.tid()
    for tid in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b = batch_index[tid]
        d = depth[tid]
        one = type(d)(1.0)
        total = type(d)(0.0)
        x0, y0, wx, wy = _cell(coords[tid, 0], coords[tid, 1])
        z = _block(depth_map, b, x0, y0)
        keep = taps.shape[0] > 0
        for dy in range(3):
            for dx in range(3):
                k = dy * 4 + dx
                top = (one - wx) * z[k] + wx * z[k + 1]
                bottom = (one - wx) * z[k + 4] + wx * z[k + 5]
                v = _sigmoid(sharpness * ((one - wy) * top + wy * bottom - d + bias))
                if keep:
                    taps[tid, dy * 3 + dx] = v
                total += v
        visibility[tid] = total / type(d)(9.0)


@parallel.chunked
@wp.kernel
def _pcf_backward(
    depth_map: wp.array3d(dtype=Any),
    coords: wp.array2d(dtype=Any),
    depth: wp.array(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: Any,
    bias: Any,
    adj_visibility: wp.array(dtype=Any),
    taps: wp.array2d(dtype=Any),
    adj_depth_map: wp.array3d(dtype=Any),
    adj_coords: wp.array2d(dtype=Any),
    adj_depth: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    thread = wp.tid()
    for tid in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b = batch_index[tid]
        d = depth[tid]
        one = type(d)(1.0)
        g = adj_visibility[tid] / type(d)(9.0)
        gx = type(d)(0.0)
        gy = type(d)(0.0)
        gd = type(d)(0.0)
        height = depth_map.shape[1]
        width = depth_map.shape[2]
        x0, y0, wx, wy = _cell(coords[tid, 0], coords[tid, 1])
        for dy in range(-1, 2):
            ya = wp.clamp(y0 + dy, 0, height - 1)
            yb = wp.clamp(y0 + dy + 1, 0, height - 1)
            for dx in range(-1, 2):
                xa = wp.clamp(x0 + dx, 0, width - 1)
                xb = wp.clamp(x0 + dx + 1, 0, width - 1)
                z00 = depth_map[b, ya, xa]
                z01 = depth_map[b, ya, xb]
                z10 = depth_map[b, yb, xa]
                z11 = depth_map[b, yb, xb]
                v = taps[tid, (dy + 1) * 3 + dx + 1]
                gz = g * sharpness * v * (one - v)  # d loss / d z_map(tap)
                gd -= gz
                gx += gz * ((one - wy) * (z01 - z00) + wy * (z11 - z10))
                gy += gz * (((one - wx) * z10 + wx * z11) - ((one - wx) * z00 + wx * z01))
                wp.atomic_add(adj_depth_map, b, ya, xa, gz * (one - wx) * (one - wy))
                wp.atomic_add(adj_depth_map, b, ya, xb, gz * wx * (one - wy))
                wp.atomic_add(adj_depth_map, b, yb, xa, gz * (one - wx) * wy)
                wp.atomic_add(adj_depth_map, b, yb, xb, gz * wx * wy)
        adj_coords[tid, 0] = gx
        adj_coords[tid, 1] = gy
        adj_depth[tid] = gd


for _t in (wp.float32, wp.float64):
    # Both overloads up front: the module compiles once instead of again when float64 first appears.
    _inputs = [
        wp.array3d(dtype=_t),
        wp.array2d(dtype=_t),
        wp.array(dtype=_t),
        wp.array(dtype=wp.int32),
        _t,
        _t,
    ]
    wp.overload(_pcf_forward, [*_inputs, wp.array(dtype=_t), wp.array2d(dtype=_t), int, int])
    wp.overload(
        _pcf_backward,
        [
            *_inputs,
            wp.array(dtype=_t),
            wp.array2d(dtype=_t),
            wp.array3d(dtype=_t),
            wp.array2d(dtype=_t),
            wp.array(dtype=_t),
            int,
            int,
        ],
    )


# ------------------------------------------------------------- the PCF forward in SIMD lanes (CPU float32)
# Warp's CPU code is scalar: LLVM does not vectorize a kernel's loop over points, nor the 9 taps of one point
# (an inline exp instead of libm's, so that the SLP vectorizer could pack the taps, stayed scalar and was
# slower). This native function runs the same forward on 8 points at a time in clang vector types
# (``warp_kernels.lanes``): the 4 x 4 texel blocks are gathered lane by lane, then the bilinear taps, the
# sigmoid and the sum run in vector registers. Its exp is Cephes' single-precision polynomial (relative
# error below 2e-7; libm's ``expf`` is a scalar call), used by the scalar remainder too, so a point's value
# does not depend on its place in a run of 8. The CUDA build of the module compiles only the scalar loop,
# with CUDA's ``expf``; the renderer never launches this kernel on CUDA or in float64
# (``pcf_forward_kernel``): there the generic ``_pcf_forward`` runs.
_PCF_SIMD = (
    r"""
#if defined(__CUDA_ARCH__)
auto pcf_exp = [](float a) -> float { return expf(a); };
#else
"""
    + lanes.CPU_LANES
    + r"""
auto pcf_exp = cephes_exp;
#endif
const int height = depth_map.shape[1];
const int width = depth_map.shape[2];
const bool keep = taps.shape[0] > 0;
auto clamp = [](int v, int hi) -> int { return v < 0 ? 0 : (v > hi ? hi : v); };  // border texels repeat
int i = start;
#if !defined(__CUDA_ARCH__)
for (; i + 8 <= end; i += 8) {
    v8f d, fx, fy;
    int b[8];
    for (int l = 0; l < 8; ++l) {
        b[l] = batch_index.data[i + l];
        d[l] = *wp::address(depth, i + l);
        fx[l] = *wp::address(coords, i + l, 0) - 0.5f;
        fy[l] = *wp::address(coords, i + l, 1) - 0.5f;
    }
    const v8f x0f = vfloor(fx), y0f = vfloor(fy);
    const v8i x0 = __builtin_convertvector(x0f, v8i), y0 = __builtin_convertvector(y0f, v8i);
    const v8f wx = fx - x0f, wy = fy - y0f, one = 1.0f;
    v8f z[16];
    for (int l = 0; l < 8; ++l) {
        for (int r = 0; r < 4; ++r) {
            const int row = clamp(y0[l] - 1 + r, height - 1);
            for (int c = 0; c < 4; ++c)
                z[r * 4 + c][l] = *wp::address(depth_map, b[l], row, clamp(x0[l] - 1 + c, width - 1));
        }
    }
    v8f total = 0.0f;
    for (int dy = 0; dy < 3; ++dy) {
        for (int dx = 0; dx < 3; ++dx) {
            const int k = dy * 4 + dx;
            const v8f top = (one - wx) * z[k] + wx * z[k + 1];
            const v8f bottom = (one - wx) * z[k + 4] + wx * z[k + 5];
            const v8f x = sharpness * ((one - wy) * top + wy * bottom - d + bias);
            const v8f e = vexp(-__builtin_bit_cast(v8f, __builtin_bit_cast(v8i, x) & 0x7fffffff));
            const v8f s = one / (one + e);
            const v8f v = pick(x >= 0.0f, s, e * s);
            if (keep)
                for (int l = 0; l < 8; ++l) *wp::address(taps, i + l, dy * 3 + dx) = v[l];
            total += v;
        }
    }
    total = total / 9.0f;
    for (int l = 0; l < 8; ++l) *wp::address(visibility, i + l) = total[l];
}
#endif
for (; i < end; ++i) {  // the remainder (and every point on CUDA), one at a time, in the same operations
    const int b = batch_index.data[i];
    const float d = *wp::address(depth, i);
    const float fx = *wp::address(coords, i, 0) - 0.5f, fy = *wp::address(coords, i, 1) - 0.5f;
    const float x0f = floorf(fx), y0f = floorf(fy);
    const int x0 = (int)x0f, y0 = (int)y0f;
    const float wx = fx - x0f, wy = fy - y0f;
    float z[16];
    for (int r = 0; r < 4; ++r) {
        const int row = clamp(y0 - 1 + r, height - 1);
        for (int c = 0; c < 4; ++c)
            z[r * 4 + c] = *wp::address(depth_map, b, row, clamp(x0 - 1 + c, width - 1));
    }
    float total = 0.0f;
    for (int dy = 0; dy < 3; ++dy) {
        for (int dx = 0; dx < 3; ++dx) {
            const int k = dy * 4 + dx;
            const float top = (1.0f - wx) * z[k] + wx * z[k + 1];
            const float bottom = (1.0f - wx) * z[k + 4] + wx * z[k + 5];
            const float x = sharpness * ((1.0f - wy) * top + wy * bottom - d + bias);
            const float e = pcf_exp(-fabsf(x));
            const float s = 1.0f / (1.0f + e);
            const float v = x >= 0.0f ? s : e * s;
            if (keep) *wp::address(taps, i, dy * 3 + dx) = v;
            total += v;
        }
    }
    *wp::address(visibility, i) = total / 9.0f;
}
"""
)


@wp.func_native(_PCF_SIMD)
def _pcf_lanes(
    depth_map: wp.array3d(dtype=wp.float32),
    coords: wp.array2d(dtype=wp.float32),
    depth: wp.array(dtype=wp.float32),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: wp.float32,
    bias: wp.float32,
    visibility: wp.array(dtype=wp.float32),
    taps: wp.array2d(dtype=wp.float32),
    start: int,
    end: int,
): ...


@parallel.chunked
@wp.kernel
def _pcf_forward_simd(
    depth_map: wp.array3d(dtype=wp.float32),
    coords: wp.array2d(dtype=wp.float32),
    depth: wp.array(dtype=wp.float32),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: wp.float32,
    bias: wp.float32,
    visibility: wp.array(dtype=wp.float32),
    taps: wp.array2d(dtype=wp.float32),
    items: int,
    chunk: int,
):
    """``_pcf_forward`` for float32 on CPU: each thread's run of points through ``_PCF_SIMD``."""
    thread = wp.tid()
    end = wp.min(thread * chunk + chunk, items)
    _pcf_lanes(depth_map, coords, depth, batch_index, sharpness, bias, visibility, taps, thread * chunk, end)


SIMD_CPU = True  # float32 CPU PCF forward in SIMD lanes (``_pcf_forward_simd``); False: the generic kernel


def pcf_forward_kernel(dtype: torch.dtype, device: torch.device):
    """The PCF forward kernel for points of ``dtype`` on ``device``: ``_pcf_forward_simd`` for float32 on
    CPU (when ``SIMD_CPU``), else the generic ``_pcf_forward`` (float64, CUDA)."""
    if SIMD_CPU and dtype == torch.float32 and torch.device(device).type == "cpu":
        return _pcf_forward_simd
    return _pcf_forward


def _launch_parts(kernel, n: int, args: list, parts: list[slice] | None = None) -> None:
    """Launch ``kernel`` over n points in ``parts`` (default ``parallel.split``) over the CPU threads
    (``warp_kernels.parallel``).

    ``args`` are the kernel's arguments: tensors with n rows are sliced per part (an empty one stays
    empty), the depth map (3-D) and scalars are passed whole, and a ``parallel.Accumulator`` (the depth
    map's gradient, made for these parts) gives each part its own, zeroed by the part (Warp's CPU atomics
    are plain adds).
    """
    wp.init()  # no-op after the first call; Warp is never initialized at import
    device = next(a for a in args if torch.is_tensor(a)).device
    parts = parallel.split(device, n) if parts is None else parts
    steps = []
    for k, sl in enumerate(parts):
        tensors, zero = [], []
        for a in args:
            if isinstance(a, parallel.Accumulator):
                a = a.part(k, zero=False)
                zero.append(a.zero_)
            elif torch.is_tensor(a) and a.dim() < 3 and a.shape[0] == n:
                a = a[sl]
            tensors.append(a)
        steps.append([*zero, (kernel, sl.stop - sl.start, tensors)])
    parallel.run_launches(device, __name__, steps)


class PCFVisibility(torch.autograd.Function):
    """Autograd bridge of the Warp kernels (forward and hand-written adjoint); the forward keeps the 9
    tap values of every point for the adjoint."""

    @staticmethod
    @parallel.serial
    def forward(ctx, depth_map, coords, depth, batch_index, sharpness, bias):
        depth_map, coords, depth = (t.detach().contiguous() for t in (depth_map, coords, depth))
        batch_index = batch_index.to(torch.int32).contiguous()
        n = depth.shape[0]
        visibility = depth.new_empty(depth.shape)
        needs_taps = any(ctx.needs_input_grad[:3])
        taps = depth.new_empty((n if needs_taps else 0), 9)
        if n:
            point = [depth_map, coords, depth, batch_index, float(sharpness), float(bias)]
            _launch_parts(pcf_forward_kernel(depth.dtype, depth.device), n, [*point, visibility, taps])
        ctx.save_for_backward(depth_map, coords, depth, batch_index, taps)
        ctx.constants = (float(sharpness), float(bias))
        return visibility

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_visibility):
        depth_map, coords, depth, batch_index, taps = ctx.saved_tensors
        n = depth.shape[0]
        parts = parallel.split(depth.device, n)
        adj_map = parallel.Accumulator(depth_map, len(parts))  # accumulated with atomics
        adj_coords, adj_depth = torch.empty_like(coords), torch.empty_like(depth)  # written per point
        if n:
            point = [depth_map, coords, depth, batch_index, *ctx.constants]
            grads = [adj_visibility.contiguous(), taps, adj_map, adj_coords, adj_depth]
            _launch_parts(_pcf_backward, n, [*point, *grads], parts)
        return adj_map.total(), adj_coords, adj_depth, None, None, None


# ------------------------------------------------------------------- light-view projection of points
PROJECT_MIN_DEPTH = 1e-6  # the depth divisor is clamped here (as LightView.project, the twin)


@parallel.chunked
@wp.kernel
def _project_forward(
    points: wp.array2d(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    rotation: wp.array3d(dtype=Any),
    eye: wp.array2d(dtype=Any),
    focal: wp.array(dtype=Any),
    centre: Any,
    coords: wp.array2d(dtype=Any),
    depth: wp.array(dtype=Any),
    items: int,
    chunk: int,
):
    thread = wp.tid()
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b = batch_index[k]
        d0 = points[k, 0] - eye[b, 0]
        d1 = points[k, 1] - eye[b, 1]
        d2 = points[k, 2] - eye[b, 2]
        q0 = rotation[b, 0, 0] * d0 + rotation[b, 0, 1] * d1 + rotation[b, 0, 2] * d2
        q1 = rotation[b, 1, 0] * d0 + rotation[b, 1, 1] * d1 + rotation[b, 1, 2] * d2
        q2 = rotation[b, 2, 0] * d0 + rotation[b, 2, 1] * d1 + rotation[b, 2, 2] * d2
        zs = wp.max(q2, type(q2)(PROJECT_MIN_DEPTH))
        coords[k, 0] = focal[b] * q0 / zs + centre
        coords[k, 1] = focal[b] * q1 / zs + centre
        depth[k] = q2


@parallel.chunked
@wp.kernel
def _project_backward(
    points: wp.array2d(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    rotation: wp.array3d(dtype=Any),
    eye: wp.array2d(dtype=Any),
    focal: wp.array(dtype=Any),
    adj_coords: wp.array2d(dtype=Any),
    adj_depth: wp.array(dtype=Any),
    adj_points: wp.array2d(dtype=Any),
    adj_rotation: wp.array3d(dtype=Any),
    adj_eye: wp.array2d(dtype=Any),
    items: int,
    chunk: int,
):
    thread = wp.tid()
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b = batch_index[k]
        d = wp.vector(points[k, 0] - eye[b, 0], points[k, 1] - eye[b, 1], points[k, 2] - eye[b, 2])
        q0 = rotation[b, 0, 0] * d[0] + rotation[b, 0, 1] * d[1] + rotation[b, 0, 2] * d[2]
        q1 = rotation[b, 1, 0] * d[0] + rotation[b, 1, 1] * d[1] + rotation[b, 1, 2] * d[2]
        q2 = rotation[b, 2, 0] * d[0] + rotation[b, 2, 1] * d[1] + rotation[b, 2, 2] * d[2]
        f = focal[b]
        zs = wp.max(q2, type(q2)(PROJECT_MIN_DEPTH))
        gu = adj_coords[k, 0]
        gv = adj_coords[k, 1]
        g0 = gu * f / zs
        g1 = gv * f / zs
        g2 = adj_depth[k]
        if q2 > type(q2)(PROJECT_MIN_DEPTH):  # the clamp passes no gradient below the minimum
            g2 = g2 - (g0 * q0 + g1 * q1) / zs
        dq = wp.vector(g0, g1, g2)
        for j in range(3):
            gp = dq[0] * rotation[b, 0, j] + dq[1] * rotation[b, 1, j] + dq[2] * rotation[b, 2, j]
            adj_points[k, j] = gp
            wp.atomic_add(adj_eye, b, j, -gp)
            for i in range(3):
                wp.atomic_add(adj_rotation, b, i, j, dq[i] * d[j])


for _t in (wp.float32, wp.float64):
    _inputs = [wp.array2d(dtype=_t), wp.array(dtype=wp.int32), wp.array3d(dtype=_t), wp.array2d(dtype=_t)]
    _inputs += [wp.array(dtype=_t)]
    wp.overload(_project_forward, [*_inputs, _t, wp.array2d(dtype=_t), wp.array(dtype=_t), int, int])
    _adj = [wp.array2d(dtype=_t), wp.array(dtype=_t), wp.array2d(dtype=_t), wp.array3d(dtype=_t)]
    wp.overload(_project_backward, [*_inputs, *_adj, wp.array2d(dtype=_t), int, int])


class LightProjection(torch.autograd.Function):
    """Autograd bridge of the projection kernels (hand-written adjoint)."""

    @staticmethod
    @parallel.serial
    def forward(ctx, points, batch_index, rotation, eye, focal, size):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        points, rotation, eye = (t.detach().contiguous() for t in (points, rotation, eye))
        focal = focal.detach().to(points.dtype).contiguous()
        n = points.shape[0]
        coords, depth = points.new_empty(n, 2), points.new_empty(n)
        parts = parallel.split(points.device, n)

        steps = []
        for sl in parts if n else []:
            tensors = [points[sl], batch_index[sl], rotation, eye, focal, size / 2, coords[sl], depth[sl]]
            steps.append([(_project_forward, sl.stop - sl.start, tensors)])
        parallel.run_launches(points.device, __name__, steps)
        ctx.save_for_backward(points, batch_index, rotation, eye, focal)
        ctx.mark_non_differentiable(batch_index)
        return coords, depth

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_coords, adj_depth):
        points, batch_index, rotation, eye, focal = ctx.saved_tensors
        n = points.shape[0]
        adj_coords = torch.zeros_like(points[:, :2]) if adj_coords is None else adj_coords.contiguous()
        adj_depth = torch.zeros_like(points[:, 0]) if adj_depth is None else adj_depth.contiguous()
        adj_points = torch.empty_like(points)
        parts = parallel.split(points.device, n)
        rotations = parallel.Accumulator(rotation, len(parts))
        eyes = parallel.Accumulator(eye, len(parts))

        steps = []
        for k, sl in enumerate(parts if n else []):
            accumulators = [rotations.part(k, zero=False), eyes.part(k, zero=False)]  # zeroed by the part
            tensors = [points[sl], batch_index[sl], rotation, eye, focal, adj_coords[sl], adj_depth[sl]]
            tensors += [adj_points[sl], *accumulators]
            steps.append([*(a.zero_ for a in accumulators), (_project_backward, sl.stop - sl.start, tensors)])
        parallel.run_launches(points.device, __name__, steps)
        return adj_points, None, *parallel.totals([rotations, eyes]), None, None


def project_points(
    points: Tensor, batch_index: Tensor, rotation: Tensor, eye: Tensor, focal: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """Texel coordinates and light-view depth of points (Warp; twin: ``LightView.project``).

    ``q = rotation[b] (p - eye[b])``; coords = ``focal[b] * q_xy / max(q_z, 1e-6) + size / 2``, depth = q_z.

    Args:
        points: (N, 3) main-camera points; batch_index: (N,) integer light view of each point.
        rotation: (B, 3, 3) light-view axes as rows; eye: (B, 3) light-view centres.
        focal: (B,) focal lengths in texels (no gradient); size: texels per side.

    Returns:
        coords (N, 2) and depth (N,), differentiable w.r.t. points, rotation and eye.
    """
    n = points.shape[0]
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    if batch_index.shape != (n,):
        raise ValueError(f"batch_index must have shape ({n},), got {tuple(batch_index.shape)}")
    b = rotation.shape[0]
    if rotation.shape != (b, 3, 3) or eye.shape != (b, 3) or focal.shape != (b,):
        raise ValueError(
            f"rotation, eye and focal must have shapes (B, 3, 3), (B, 3), (B,), got {tuple(rotation.shape)}, "
            f"{tuple(eye.shape)}, {tuple(focal.shape)}"
        )
    index = batch_index.to(torch.int32).contiguous()
    return LightProjection.apply(
        points, index, rotation.to(points.dtype), eye.to(points.dtype), focal, int(size)
    )


def check_pcf_inputs(depth_map: Tensor, coords: Tensor, depth: Tensor, batch_index: Tensor) -> None:
    """Shape, dtype and device checks shared by the Warp op and its torch twin."""
    if depth_map.dim() != 3:
        raise ValueError(f"depth_map must have shape (B, Hs, Ws), got {tuple(depth_map.shape)}")
    if depth_map.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"depth_map must be float32 or float64, got {depth_map.dtype}")
    n = depth.shape[0] if depth.dim() == 1 else -1
    if depth.dim() != 1:
        raise ValueError(f"depth must have shape (N,), got {tuple(depth.shape)}")
    if coords.shape != (n, 2):
        raise ValueError(f"coords must have shape ({n}, 2), got {tuple(coords.shape)}")
    if batch_index.shape != (n,) or batch_index.is_floating_point():
        raise ValueError(
            f"batch_index must be an integer tensor of shape ({n},), got {tuple(batch_index.shape)}"
        )
    for name, t in (("coords", coords), ("depth", depth)):
        if t.dtype != depth_map.dtype:
            raise ValueError(f"{name} must be {depth_map.dtype} like depth_map, got {t.dtype}")
    for name, t in (("coords", coords), ("depth", depth), ("batch_index", batch_index)):
        if t.device != depth_map.device:
            raise ValueError(f"{name} must be on {depth_map.device} like depth_map, got {t.device}")
    if n and (int(batch_index.min()) < 0 or int(batch_index.max()) >= depth_map.shape[0]):
        raise ValueError(f"batch_index must lie in [0, {depth_map.shape[0]}) (the depth_map batch)")


def pcf_visibility(
    depth_map: Tensor,
    coords: Tensor,
    depth: Tensor,
    batch_index: Tensor,
    sharpness: float = 1000.0,
    bias: float = 0.005,
) -> Tensor:
    """Soft shadow-map visibility of points, 3x3 percentage-closer filtered (Warp).

    Args:
        depth_map: (B, Hs, Ws) light-view depth of the nearest surface per texel (large where empty).
        coords: (N, 2) texel coordinates (x right, y down; texel (i, j) centre at (j + 0.5, i + 0.5)).
        depth: (N,) light-view depth of each point (same units as ``depth_map``).
        batch_index: (N,) integer shadow map of each point, in [0, B).
        sharpness: s in ``sigmoid(s * (z_map - depth + bias))``, per depth unit.
        bias: b, depth offset against self-shadowing.

    Returns:
        (N,) visibility in [0, 1], differentiable w.r.t. depth_map, coords and depth.
    """
    check_pcf_inputs(depth_map, coords, depth, batch_index)
    return PCFVisibility.apply(depth_map, coords, depth, batch_index, float(sharpness), float(bias))
