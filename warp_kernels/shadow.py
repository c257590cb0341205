"""Shadow-map visibility with a 3x3 percentage-closer filter (Warp kernels, CPU and CUDA).

For each surface point seen by the main camera, transformed into the light's view (texel coordinates
``coords`` in the shadow map and light-view depth ``depth``):

    V = 1/9 * sum_{dx, dy in {-1, 0, 1}} sigmoid(s * (z_map(coords + (dx, dy)) - depth + b))

``z_map`` is read with bilinear interpolation between texel centres (border texels repeat outside the
map), so gradients reach the depth map (and through the rasterizer the occluder's vertices), the lookup
position and the point depth (and through them the receiver's vertices and the light position).

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

# Gradients come from a hand-written adjoint kernel (about 3x faster than Warp's generated one here).
wp.set_module_options({"enable_backward": False})


@wp.func
def _texels(height: int, width: int, x: Any, y: Any):
    """Clamped texel indices around (x, y) and the bilinear weights of the second ones."""
    fx = x - type(x)(0.5)
    fy = y - type(y)(0.5)
    x0f = wp.floor(fx)
    y0f = wp.floor(fy)
    x0 = int(x0f)
    y0 = int(y0f)
    xa = wp.clamp(x0, 0, width - 1)
    xb = wp.clamp(x0 + 1, 0, width - 1)
    ya = wp.clamp(y0, 0, height - 1)
    yb = wp.clamp(y0 + 1, 0, height - 1)
    return xa, xb, ya, yb, fx - x0f, fy - y0f


@wp.func
def _sigmoid(x: Any):
    # Both branches stay finite for any x: exp() only sees non-positive values.
    one = type(x)(1.0)
    if x >= type(x)(0.0):
        return one / (one + wp.exp(-x))
    e = wp.exp(x)
    return e / (one + e)


@wp.kernel
def _pcf_forward(
    depth_map: wp.array3d(dtype=Any),
    coords: wp.array2d(dtype=Any),
    depth: wp.array(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: Any,
    bias: Any,
    visibility: wp.array(dtype=Any),
):
    tid = wp.tid()
    b = batch_index[tid]
    d = depth[tid]
    one = type(d)(1.0)
    total = type(d)(0.0)
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            xa, xb, ya, yb, wx, wy = _texels(
                depth_map.shape[1],
                depth_map.shape[2],
                coords[tid, 0] + type(d)(dx),
                coords[tid, 1] + type(d)(dy),
            )
            top = (one - wx) * depth_map[b, ya, xa] + wx * depth_map[b, ya, xb]
            bottom = (one - wx) * depth_map[b, yb, xa] + wx * depth_map[b, yb, xb]
            total += _sigmoid(sharpness * ((one - wy) * top + wy * bottom - d + bias))
    visibility[tid] = total / type(d)(9.0)


@wp.kernel
def _pcf_backward(
    depth_map: wp.array3d(dtype=Any),
    coords: wp.array2d(dtype=Any),
    depth: wp.array(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    sharpness: Any,
    bias: Any,
    adj_visibility: wp.array(dtype=Any),
    adj_depth_map: wp.array3d(dtype=Any),
    adj_coords: wp.array2d(dtype=Any),
    adj_depth: wp.array(dtype=Any),
):
    tid = wp.tid()
    b = batch_index[tid]
    d = depth[tid]
    one = type(d)(1.0)
    g = adj_visibility[tid] / type(d)(9.0)
    gx = type(d)(0.0)
    gy = type(d)(0.0)
    gd = type(d)(0.0)
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            xa, xb, ya, yb, wx, wy = _texels(
                depth_map.shape[1],
                depth_map.shape[2],
                coords[tid, 0] + type(d)(dx),
                coords[tid, 1] + type(d)(dy),
            )
            z00 = depth_map[b, ya, xa]
            z01 = depth_map[b, ya, xb]
            z10 = depth_map[b, yb, xa]
            z11 = depth_map[b, yb, xb]
            top = (one - wx) * z00 + wx * z01
            bottom = (one - wx) * z10 + wx * z11
            v = _sigmoid(sharpness * ((one - wy) * top + wy * bottom - d + bias))
            gz = g * sharpness * v * (one - v)  # d loss / d z_map(tap)
            gd -= gz
            gx += gz * ((one - wy) * (z01 - z00) + wy * (z11 - z10))
            gy += gz * (bottom - top)
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
    wp.overload(_pcf_forward, [*_inputs, wp.array(dtype=_t)])
    wp.overload(
        _pcf_backward,
        [*_inputs, wp.array(dtype=_t), wp.array3d(dtype=_t), wp.array2d(dtype=_t), wp.array(dtype=_t)],
    )


def _launch(kernel, tensors: list[Tensor], sharpness: float, bias: float) -> None:
    """Launch on the tensors' device (on CUDA in torch's current stream); tensors in kernel order."""
    wp.init()  # no-op after the first call; Warp is never initialized at import
    device = tensors[0].device
    dtype = wp.float64 if tensors[0].dtype == torch.float64 else wp.float32
    arrays = [
        wp.from_torch(t, dtype=wp.int32 if t.dtype == torch.int32 else dtype, requires_grad=False)
        for t in tensors
    ]
    inputs = [*arrays[:4], dtype(sharpness), dtype(bias), *arrays[4:]]
    stream = wp.stream_from_torch(device) if device.type == "cuda" else None
    wp.launch(
        kernel, dim=tensors[1].shape[0], inputs=inputs, device=wp.device_from_torch(device), stream=stream
    )


class PCFVisibility(torch.autograd.Function):
    """Autograd bridge of the Warp kernels (forward and hand-written adjoint)."""

    @staticmethod
    def forward(ctx, depth_map, coords, depth, batch_index, sharpness, bias):
        depth_map, coords, depth = (t.detach().contiguous() for t in (depth_map, coords, depth))
        batch_index = batch_index.to(torch.int32).contiguous()
        visibility = depth.new_empty(depth.shape)
        if depth.numel():
            _launch(_pcf_forward, [depth_map, coords, depth, batch_index, visibility], sharpness, bias)
        ctx.save_for_backward(depth_map, coords, depth, batch_index)
        ctx.constants = (sharpness, bias)
        return visibility

    @staticmethod
    def backward(ctx, adj_visibility):
        depth_map, coords, depth, batch_index = ctx.saved_tensors
        adj_map = torch.zeros_like(depth_map)  # accumulated with atomics
        adj_coords, adj_depth = torch.empty_like(coords), torch.empty_like(depth)  # written per point
        if depth.numel():
            adj = [adj_visibility.contiguous(), adj_map, adj_coords, adj_depth]
            _launch(_pcf_backward, [depth_map, coords, depth, batch_index, *adj], *ctx.constants)
        return adj_map, adj_coords, adj_depth, None, None, None


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
