"""Barycentric interpolation of per-vertex values at packed pixels (Warp kernels, CPU and CUDA).

For each packed pixel k (batch item ``b[k]``, face ``f[k]``, barycentrics ``w[k]``):

    out[k] = sum_i w[k, i] * values[b[k], faces[f[k], i]]

Gradients reach ``w`` and ``values`` through a hand-written adjoint kernel. On CPU the pixels are split
over threads (``warp_kernels.parallel``), each accumulating the vertex gradient in a private copy.
The pure-torch twin is ``harp_kaolin.render.renderer.interpolate_pixels`` (its ``position``).
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor

from warp_kernels import parallel

wp.set_module_options({"enable_backward": False})


@wp.func
def nonneg(i: int):
    """``max(i, 0)``: the same index, which the compiler then knows to be non-negative. For indices that
    are non-negative anyway: thread indices, and indices that the host validated.

    Warp's array accessors wrap negative indices Python-style, a compare per dimension at every access.
    LLVM drops those compares for an index that it can prove non-negative, so a kernel that reads and
    adds into many (B, N, 3) and (B, C, H, W) arrays through a few indices marks them once (DESIGN.md,
    session 20: a few percent of the shading kernels' CPU time)."""
    return wp.max(i, 0)


@wp.func
def packed_pixel(
    bary: wp.array2d(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    face: wp.array(dtype=wp.int32),
    faces: wp.array2d(dtype=wp.int32),
    k: int,
):
    """Packed pixel k's batch item b, face f, the face's vertices i0 i1 i2 and its barycentrics w0 w1 w2
    (the gather every per-pixel kernel starts with: here and in ``warp_kernels.shading``); the indices
    marked non-negative (``nonneg``: the host checked them)."""
    f = nonneg(face[k])
    b = nonneg(batch_index[k])
    i0 = nonneg(faces[f, 0])
    i1 = nonneg(faces[f, 1])
    i2 = nonneg(faces[f, 2])
    return b, f, i0, i1, i2, bary[k, 0], bary[k, 1], bary[k, 2]


@parallel.chunked
@wp.kernel
def _interpolate(
    bary: wp.array2d(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    face: wp.array(dtype=wp.int32),
    faces: wp.array2d(dtype=wp.int32),
    values: wp.array3d(dtype=Any),
    out: wp.array2d(dtype=Any),
    items: int,
    chunk: int,
):
    thread = wp.tid()
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b, _f, i0, i1, i2, w0, w1, w2 = packed_pixel(bary, batch_index, face, faces, k)
        for c in range(values.shape[2]):
            out[k, c] = w0 * values[b, i0, c] + w1 * values[b, i1, c] + w2 * values[b, i2, c]


@parallel.chunked
@wp.kernel
def _interpolate_backward(
    bary: wp.array2d(dtype=Any),
    batch_index: wp.array(dtype=wp.int32),
    face: wp.array(dtype=wp.int32),
    faces: wp.array2d(dtype=wp.int32),
    values: wp.array3d(dtype=Any),
    adj_out: wp.array2d(dtype=Any),
    adj_bary: wp.array2d(dtype=Any),
    adj_values: wp.array3d(dtype=Any),
    items: int,
    chunk: int,
):
    thread = wp.tid()
    for k in range(thread * chunk, wp.min(thread * chunk + chunk, items)):
        b, _f, i0, i1, i2, w0, w1, w2 = packed_pixel(bary, batch_index, face, faces, k)
        g0 = type(w0)(0.0)
        g1 = type(w0)(0.0)
        g2 = type(w0)(0.0)
        for c in range(values.shape[2]):
            g = adj_out[k, c]
            g0 += g * values[b, i0, c]
            g1 += g * values[b, i1, c]
            g2 += g * values[b, i2, c]
            wp.atomic_add(adj_values, b, i0, c, w0 * g)
            wp.atomic_add(adj_values, b, i1, c, w1 * g)
            wp.atomic_add(adj_values, b, i2, c, w2 * g)
        adj_bary[k, 0] = g0
        adj_bary[k, 1] = g1
        adj_bary[k, 2] = g2


parallel.declare_float_overloads(globals())


class _Interpolate(torch.autograd.Function):
    @staticmethod
    @parallel.serial
    def forward(ctx, bary, values, batch_index, face, faces):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        bary, values = bary.detach().contiguous(), values.detach().contiguous()
        out = values.new_empty(bary.shape[0], values.shape[2])
        parts = parallel.split(bary.device, bary.shape[0])

        steps = []
        for sl in parts if bary.shape[0] else []:
            args = [bary[sl], batch_index[sl], face[sl], faces, values, out[sl]]
            steps.append([(_interpolate, sl.stop - sl.start, args)])
        parallel.run_launches(bary.device, __name__, steps)
        ctx.save_for_backward(bary, values, batch_index, face, faces)
        return out

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_out):
        bary, values, batch_index, face, faces = ctx.saved_tensors
        adj_out = adj_out.contiguous()
        adj_bary = torch.empty_like(bary)
        parts = parallel.split(bary.device, bary.shape[0])
        sums = parallel.Accumulator(values, len(parts))
        steps = []
        for k, sl in enumerate(parts if bary.shape[0] else []):
            acc = sums.part(k, zero=False)  # zeroed by the part itself
            tensors = [bary[sl], batch_index[sl], face[sl], faces, values, adj_out[sl], adj_bary[sl], acc]
            steps.append([acc.zero_, (_interpolate_backward, sl.stop - sl.start, tensors)])
        parallel.run_launches(bary.device, __name__, steps)
        return adj_bary, sums.total(), None, None, None


def interpolate(bary: Tensor, values: Tensor, batch_index: Tensor, face: Tensor, faces: Tensor) -> Tensor:
    """Interpolate per-vertex values at packed pixels.

    Args:
        bary: (N, 3) barycentrics of each pixel in its face.
        values: (B, V, C) per-vertex values.
        batch_index: (N,) integer batch item of each pixel; face: (N,) integer face of each pixel.
        faces: (F, 3) integer vertex indices.

    Returns:
        (N, C) interpolated values, dtype of ``values``; differentiable w.r.t. ``bary`` and ``values``.
    """
    n = bary.shape[0]
    if bary.dim() != 2 or bary.shape[1] != 3:
        raise ValueError(f"bary must have shape (N, 3), got {tuple(bary.shape)}")
    if values.dim() != 3:
        raise ValueError(f"values must have shape (B, V, C), got {tuple(values.shape)}")
    for name, t in (("batch_index", batch_index), ("face", face)):
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    ints = [t.to(torch.int32).contiguous() for t in (batch_index, face, faces)]
    return _Interpolate.apply(bary.to(values.dtype), values, *ints)
