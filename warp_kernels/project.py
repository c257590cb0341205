"""Rasterizer inputs of a mesh seen by a pinhole camera, per vertex, in Warp kernels (CPU and CUDA); the
light view's rigid transform; and the bounding sphere that frames the shadow map's light view.

The Warp twin of ``harp_kaolin.render.camera.vertex_inputs`` (see that module for the conventions): per
batch item b, point v (OpenCV camera coordinates ``(x_v, y_v, z_v)``, z > 0) and face f,

    vertices_z[b, v]        = -z_v
    vertices_image[b, v]    = (2 (fx x_v / z_v + cx) / W - 1,  1 - 2 (fy y_v / z_v + cy) / H)
    face_normals_z[b, f]    = cos(outward normal, direction from the centroid to the eye)

computed with the same float operations in the same order as the torch function, so both give the same
bits (no FMA contraction here; the facing cosine to rounding, never its sign). The rasterizer reads each
face's corners through the faces (``raster.dibr_rasterization_indexed``); ``camera.face_inputs`` gathers
them for Kaolin's per-face arguments. The facing cosine carries no gradient, as in the torch function.
The backward applies the projection's derivative per point (hand-written adjoint); on CPU the batch is
split over threads (``warp_kernels.parallel``), whole items per thread.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor

from warp_kernels import parallel
from warp_kernels.interpolate import nonneg

wp.set_module_options({"enable_backward": False, "fuse_fp": False})

TINY = 1e-20  # as harp_kaolin.render.camera._TINY: the cosine of a degenerate face is 0
FACE_CHUNK = 64  # faces per CPU kernel thread (a 2D launch divides per thread to find its indices)


@wp.kernel
def _project_vertices(
    points: wp.array3d(dtype=Any),
    fx: Any,
    fy: Any,
    cx: Any,
    cy: Any,
    width: Any,
    height: Any,
    ndc: wp.array3d(dtype=Any),
    depth: wp.array2d(dtype=Any),
    chunk: int,
):
    """NDC position and ``-z`` (``depth``) of ``chunk`` points per thread."""
    b, q = wp.tid()
    two = type(fx)(2.0)
    one = type(fx)(1.0)
    for v in range(q * chunk, wp.min(q * chunk + chunk, points.shape[1])):
        z = points[b, v, 2]
        u = fx * points[b, v, 0] / z + cx
        w = fy * points[b, v, 1] / z + cy
        ndc[b, v, 0] = two * u / width - one
        ndc[b, v, 1] = one - two * w / height
        depth[b, v] = -z


@wp.kernel
def _face_cosines(
    points: wp.array3d(dtype=Any), faces: wp.array2d(dtype=wp.int32), fnz: wp.array2d(dtype=Any), chunk: int
):
    """The facing cosine of ``chunk`` faces per thread, operation for operation as camera.vertex_inputs."""
    b, q = wp.tid()
    b = nonneg(b)
    for f in range(nonneg(q * chunk), wp.min(q * chunk + chunk, faces.shape[0])):
        i0 = nonneg(faces[f, 0])
        i1 = nonneg(faces[f, 1])
        i2 = nonneg(faces[f, 2])
        p0 = wp.vector(points[b, i0, 0], points[b, i0, 1], points[b, i0, 2])
        p1 = wp.vector(points[b, i1, 0], points[b, i1, 1], points[b, i1, 2])
        p2 = wp.vector(points[b, i2, 0], points[b, i2, 1], points[b, i2, 2])
        e1 = p1 - p0
        e2 = p2 - p0
        three = type(p0[0])(3.0)
        nx = e1[1] * e2[2] - e1[2] * e2[1]
        ny = e1[2] * e2[0] - e1[0] * e2[2]
        nz = e1[0] * e2[1] - e1[1] * e2[0]
        tx = -(p0[0] + p1[0] + p2[0]) / three
        ty = -(p0[1] + p1[1] + p2[1]) / three
        tz = -(p0[2] + p1[2] + p2[2]) / three
        dot = nx * tx + ny * ty + nz * tz
        n2 = nx * nx + ny * ny + nz * nz
        t2 = tx * tx + ty * ty + tz * tz
        fnz[b, f] = dot / wp.max(wp.sqrt(n2) * wp.sqrt(t2), type(p0[0])(TINY))


@wp.kernel
def _project_vertices_backward(
    points: wp.array3d(dtype=Any),
    fx: Any,
    fy: Any,
    width: Any,
    height: Any,
    adj_ndc: wp.array3d(dtype=Any),
    adj_depth: wp.array2d(dtype=Any),
    adj_points: wp.array3d(dtype=Any),
    chunk: int,
):
    """adj_points[b, v] += d ndc / d points of the summed NDC gradient of point v, minus the gradient of
    its ``-z`` (``adj_depth``, unless empty)."""
    b, q = wp.tid()
    two = type(fx)(2.0)
    sx = two * fx / width  # d ndc_x / d (x / z)
    sy = two * fy / height  # -d ndc_y / d (y / z)
    for v in range(q * chunk, wp.min(q * chunk + chunk, points.shape[1])):
        x = points[b, v, 0]
        y = points[b, v, 1]
        z = points[b, v, 2]
        gx = adj_ndc[b, v, 0] * sx / z
        gy = adj_ndc[b, v, 1] * sy / z
        adj_points[b, v, 0] = adj_points[b, v, 0] + gx
        adj_points[b, v, 1] = adj_points[b, v, 1] - gy
        gz = gy * y / z - gx * x / z
        if adj_depth.shape[0] > 0:
            gz = gz - adj_depth[b, v]
        adj_points[b, v, 2] = adj_points[b, v, 2] + gz


@wp.kernel
def _bounding_sphere(points: wp.array3d(dtype=Any), centre: wp.array2d(dtype=Any), far: wp.array(dtype=Any)):
    """Per item: the centre of the points' bounding box and the largest squared distance from it, with the
    float operations of ``harp_kaolin.render.shading.bounding_sphere`` (its twin)."""
    b = wp.tid()
    n = points.shape[1]
    lo = wp.vector(points[b, 0, 0], points[b, 0, 1], points[b, 0, 2])
    hi = lo
    for v in range(1, n):
        p = wp.vector(points[b, v, 0], points[b, v, 1], points[b, v, 2])
        lo = wp.min(lo, p)
        hi = wp.max(hi, p)
    c = (lo + hi) / type(lo[0])(2.0)
    largest = type(lo[0])(0.0)
    for v in range(n):
        dx = points[b, v, 0] - c[0]
        dy = points[b, v, 1] - c[1]
        dz = points[b, v, 2] - c[2]
        largest = wp.max(largest, dx * dx + dy * dy + dz * dz)
    for k in range(3):
        centre[b, k] = c[k]
    far[b] = largest


def bounding_sphere(points: Tensor) -> tuple[Tensor, Tensor]:
    """Centre (B, 3) of the bounding box of each item's points (B, V, 3), V >= 1, and the radius (B,) of
    the sphere around it that holds them; no gradient. One Warp thread per item; the square root is
    torch's, so the result has the bits of its twin ``harp_kaolin.render.shading.bounding_sphere``."""
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < 1:
        raise ValueError(f"points must have shape (B, V >= 1, 3), got {tuple(points.shape)}")
    wp.init()  # no-op after the first call; Warp is never initialized at import
    points = points.detach().contiguous()
    centre = points.new_empty(points.shape[0], 3)
    far = points.new_empty(points.shape[0])
    if points.shape[0]:
        parallel.launch_tensors(_bounding_sphere, points.shape[0], [points, centre, far], points.device)
    return centre, far.sqrt()


RIGID_CHUNK = 256  # points per CPU kernel thread of the rigid transform (a thread per point costs more)


@wp.func
def _view_frame(eye: wp.array2d(dtype=Any), matrix: wp.array3d(dtype=Any), b: int):
    """Item b's eye and rotation (row-major) as scalars, for the two rigid-transform kernels."""
    return (
        eye[b, 0],
        eye[b, 1],
        eye[b, 2],
        matrix[b, 0, 0],
        matrix[b, 0, 1],
        matrix[b, 0, 2],
        matrix[b, 1, 0],
        matrix[b, 1, 1],
        matrix[b, 1, 2],
        matrix[b, 2, 0],
        matrix[b, 2, 1],
        matrix[b, 2, 2],
    )


@wp.kernel
def _rigid_transform(
    points: wp.array3d(dtype=Any),
    eye: wp.array2d(dtype=Any),
    matrix: wp.array3d(dtype=Any),
    chunk: int,
    out: wp.array3d(dtype=Any),
):
    """out[b, v] = matrix[b] (points[b, v] - eye[b]) for ``chunk`` points per thread."""
    b, q = wp.tid()
    e0, e1, e2, m00, m01, m02, m10, m11, m12, m20, m21, m22 = _view_frame(eye, matrix, b)
    for v in range(q * chunk, wp.min(q * chunk + chunk, points.shape[1])):
        d0 = points[b, v, 0] - e0
        d1 = points[b, v, 1] - e1
        d2 = points[b, v, 2] - e2
        out[b, v, 0] = d0 * m00 + d1 * m01 + d2 * m02
        out[b, v, 1] = d0 * m10 + d1 * m11 + d2 * m12
        out[b, v, 2] = d0 * m20 + d1 * m21 + d2 * m22


@wp.kernel
def _rigid_transform_backward(
    points: wp.array3d(dtype=Any),
    eye: wp.array2d(dtype=Any),
    matrix: wp.array3d(dtype=Any),
    adj_out: wp.array3d(dtype=Any),
    adj_points: wp.array3d(dtype=Any),
    adj_matrix: wp.array3d(dtype=Any),
    adj_eye: wp.array2d(dtype=Any),
):
    """One thread per item: adj_points = matrix^T adj_out per point; adj_matrix = sum adj_out d^T and
    adj_eye = -sum adj_points over the item's points (summed in registers)."""
    b = wp.tid()
    e0, e1, e2, m00, m01, m02, m10, m11, m12, m20, m21, m22 = _view_frame(eye, matrix, b)
    zero = type(e0)(0.0)
    s00 = zero
    s01 = zero
    s02 = zero
    s10 = zero
    s11 = zero
    s12 = zero
    s20 = zero
    s21 = zero
    s22 = zero
    t0 = zero
    t1 = zero
    t2 = zero
    for v in range(points.shape[1]):
        d0 = points[b, v, 0] - e0
        d1 = points[b, v, 1] - e1
        d2 = points[b, v, 2] - e2
        g0 = adj_out[b, v, 0]
        g1 = adj_out[b, v, 1]
        g2 = adj_out[b, v, 2]
        p0 = m00 * g0 + m10 * g1 + m20 * g2
        p1 = m01 * g0 + m11 * g1 + m21 * g2
        p2 = m02 * g0 + m12 * g1 + m22 * g2
        adj_points[b, v, 0] = p0
        adj_points[b, v, 1] = p1
        adj_points[b, v, 2] = p2
        s00 += g0 * d0
        s01 += g0 * d1
        s02 += g0 * d2
        s10 += g1 * d0
        s11 += g1 * d1
        s12 += g1 * d2
        s20 += g2 * d0
        s21 += g2 * d1
        s22 += g2 * d2
        t0 -= p0
        t1 -= p1
        t2 -= p2
    adj_matrix[b, 0, 0] = s00
    adj_matrix[b, 0, 1] = s01
    adj_matrix[b, 0, 2] = s02
    adj_matrix[b, 1, 0] = s10
    adj_matrix[b, 1, 1] = s11
    adj_matrix[b, 1, 2] = s12
    adj_matrix[b, 2, 0] = s20
    adj_matrix[b, 2, 1] = s21
    adj_matrix[b, 2, 2] = s22
    adj_eye[b, 0] = t0
    adj_eye[b, 1] = t1
    adj_eye[b, 2] = t2


parallel.declare_float_overloads(globals())


class _ProjectVertices(torch.autograd.Function):
    @staticmethod
    @parallel.serial
    def forward(ctx, points, faces, intrinsics, size):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        points = points.detach().contiguous()
        batch, count, n = points.shape[0], faces.shape[0], points.shape[1]
        fx, fy, cx, cy = (parallel.scalar(points.dtype, v) for v in intrinsics)
        width, height = (parallel.scalar(points.dtype, float(v)) for v in size)
        depth = points.new_empty(batch, n)
        ndc = points.new_empty(batch, n, 2)
        fnz = points.new_empty(batch, count)
        chunk = FACE_CHUNK if points.device.type == "cpu" else 1
        threads, point_threads = -(-count // chunk), -(-n // chunk)

        steps = []
        for sl in parallel.split(points.device, batch, min_items=1) if batch else []:
            items = sl.stop - sl.start
            vertex_args = [points[sl], fx, fy, cx, cy, width, height, ndc[sl], depth[sl], chunk]
            part = [(_project_vertices, (items, point_threads), vertex_args)]
            if count:
                part.append((_face_cosines, (items, threads), [points[sl], faces, fnz[sl], chunk]))
            steps.append(part)
        parallel.run_launches(points.device, __name__, steps)
        ctx.save_for_backward(points)
        ctx.constants = (fx, fy, width, height)
        ctx.mark_non_differentiable(fnz)
        ctx.set_materialize_grads(False)  # no zeros for the outputs without a gradient (fnz, often depth)
        return depth, ndc, fnz

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_depth, adj_ndc, _adj_fnz):
        (points,) = ctx.saved_tensors
        if adj_depth is None and adj_ndc is None:
            return None, None, None, None
        adj_ndc = points.new_zeros(points.shape[0], points.shape[1], 2) if adj_ndc is None else adj_ndc
        adj_ndc = adj_ndc.contiguous()
        adj_depth = points.new_empty(0, 0) if adj_depth is None else adj_depth.contiguous()
        adj_points = torch.empty_like(points)
        chunk = FACE_CHUNK if points.device.type == "cpu" else 1
        point_threads = -(-points.shape[1] // chunk)
        steps = []
        for sl in parallel.split(points.device, points.shape[0], min_items=1) if points.shape[0] else []:
            acc = adj_points[sl]  # zeroed by the part itself
            depth = adj_depth[sl] if adj_depth.shape[0] else adj_depth
            args = [points[sl], *ctx.constants, adj_ndc[sl], depth, acc, chunk]
            steps.append([acc.zero_, (_project_vertices_backward, (sl.stop - sl.start, point_threads), args)])
        parallel.run_launches(points.device, __name__, steps)
        return adj_points, None, None, None


def project_vertices(
    points: Tensor, faces: Tensor, intrinsics: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Rasterizer inputs per point, for the rasterizer's indexed form (``raster.dibr_rasterization_indexed``,
    ``raster.depth_map_indexed``), which reads each face's corners through ``faces`` (the Warp twin of
    ``harp_kaolin.render.camera.vertex_inputs``).

    Args:
        points: (B, V, 3) OpenCV camera coordinates (z > 0), float32 or float64.
        faces: (F, 3) integer vertex indices, counter-clockwise seen from outside, all in [0, V).
        intrinsics: (fx, fy, cx, cy) in pixels.
        size: (width, height) in pixels.

    Returns:
        vertices_z (B, V) = -z, vertices_image (B, V, 2) NDC y up, face_normals_z (B, F) (no gradient);
        differentiable w.r.t. ``points`` through the first two.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, V, 3), got {tuple(points.shape)}")
    if points.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"points must be float32 or float64, got {points.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    faces = faces.to(device=points.device, dtype=torch.int32).contiguous()
    return _ProjectVertices.apply(points, faces, tuple(float(v) for v in intrinsics), tuple(size))


class _RigidTransform(torch.autograd.Function):
    @staticmethod
    @parallel.serial
    def forward(ctx, points, eye, matrix):
        wp.init()  # no-op after the first call; Warp is never initialized at import
        points, eye, matrix = (t.detach().contiguous() for t in (points, eye, matrix))
        out = torch.empty_like(points)
        if out.numel():
            chunk = RIGID_CHUNK if points.device.type == "cpu" else 1
            dim = (points.shape[0], -(-points.shape[1] // chunk))
            parallel.launch_tensors(_rigid_transform, dim, [points, eye, matrix, chunk, out], points.device)
        ctx.save_for_backward(points, eye, matrix)
        return out

    @staticmethod
    @parallel.serial
    def backward(ctx, adj_out):
        points, eye, matrix = ctx.saved_tensors
        adj_points = torch.empty_like(points)
        adj_matrix, adj_eye = torch.zeros_like(matrix), torch.zeros_like(eye)
        if points.shape[0] and points.shape[1]:
            args = [points, eye, matrix, adj_out.contiguous(), adj_points, adj_matrix, adj_eye]
            parallel.launch_tensors(_rigid_transform_backward, points.shape[0], args, points.device)
        return adj_points, adj_eye, adj_matrix


def rigid_transform(points: Tensor, eye: Tensor, matrix: Tensor) -> Tensor:
    """``(points - eye[:, None]) @ matrix.transpose(1, 2)`` in Warp: the shadow map's light-view transform
    (torch's batched matmul costs about 1 ms per call on CPU for these 3 x 3 matrices).

    Args:
        points: (B, V, 3); eye: (B, 3); matrix: (B, 3, 3); one float dtype, one device.

    Returns:
        (B, V, 3) ``matrix[b] @ (points[b, v] - eye[b])``, differentiable in all three inputs (summed in
        the order ``d0 m_r0 + d1 m_r1 + d2 m_r2``, so within rounding of the matmul).
    """
    b = points.shape[0]
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, V, 3), got {tuple(points.shape)}")
    if eye.shape != (b, 3):
        raise ValueError(f"eye must have shape ({b}, 3), got {tuple(eye.shape)}")
    if matrix.shape != (b, 3, 3):
        raise ValueError(f"matrix must have shape ({b}, 3, 3), got {tuple(matrix.shape)}")
    if (
        points.dtype not in (torch.float32, torch.float64)
        or eye.dtype != points.dtype
        or matrix.dtype != points.dtype
    ):
        raise ValueError(
            f"points, eye and matrix must share one float dtype, got {points.dtype}, {eye.dtype} and "
            f"{matrix.dtype}"
        )
    return _RigidTransform.apply(points, eye, matrix)
