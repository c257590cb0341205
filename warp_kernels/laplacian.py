"""Laplacian smoothing as Warp kernels, with PyTorch3D's ``mesh_laplacian_smoothing`` semantics.

For vertex i with neighbours j (mesh edges) and edge weights w_ij, the differential coordinate is

    uniform, cot:  L v_i = sum_j w_ij v_j / sum_j w_ij - v_i   (w = 1, or w = cot a_ij + cot b_ij)
    cotcurv:       L v_i = (sum_j w_ij v_j - sum_j w_ij v_i) / (4 A_i)   (A_i: area of i's faces)

and the loss is the mean over vertices (and over the batch) of |L v_i|. As in PyTorch3D, the
cotangent weights and areas come from the current vertices but carry no gradient. In the uniform and
cot variants a vertex whose weights sum to zero or less gets L v_i = -v_i (PyTorch3D's value for an
isolated vertex; for a negative cot sum PyTorch3D multiplies by the sum instead). The operator is
applied edge-wise from CSR neighbour lists (``MeshTopology``), never as a dense V x V matrix.

Forward and backward are gather loops over each vertex's neighbours (one thread per vertex, no
atomics). Warp cannot differentiate variables mutated in dynamic loops, so the backward kernel is the
adjoint written out: d|L v_i| / dv_j = s_i w_ij u_i for neighbours, -c_j u_j for the vertex itself,
with L v_i = s_i sum_j w_ij v_j - c_i v_i and u_i = L v_i / |L v_i|.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor
from torch.autograd.function import once_differentiable

from warp_kernels import reference
from warp_kernels.mesh_topology import (
    REDUCTIONS,
    MeshTopology,
    check_backend,
    check_choice,
    check_vertices,
    torch_stream,
    warp_array,
    warp_vec3,
)

METHODS = ("uniform", "cot", "cotcurv")
_MODE = {"uniform": 0, "cot": 1, "cotcurv": 2}


@wp.kernel
def _cot_weights_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    faces: wp.array2d(dtype=wp.int32),  # (F, 3)
    face_edges: wp.array2d(dtype=wp.int32),  # (F, 3)
    eps: Any,
    weights: wp.array2d(dtype=Any),  # (B, E) out, zeroed
    areas: wp.array2d(dtype=Any),  # (B, V) out, zeroed
):
    b, f = wp.tid()
    i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
    p0, p1, p2 = vertices[b, i0], vertices[b, i1], vertices[b, i2]
    la = wp.length(p1 - p2)
    lb = wp.length(p0 - p2)
    lc = wp.length(p0 - p1)
    half = type(eps)(0.5)
    s = half * (la + lb + lc)
    area = wp.sqrt(wp.max(s * (s - la) * (s - lb) * (s - lc), eps))  # Heron, as PyTorch3D
    a2, b2, c2 = la * la, lb * lb, lc * lc
    q = type(eps)(4.0) * area
    # The angle at corner k faces face edge (k + 1) % 3.
    wp.atomic_add(weights, b, face_edges[f, 1], (b2 + c2 - a2) / q)
    wp.atomic_add(weights, b, face_edges[f, 2], (a2 + c2 - b2) / q)
    wp.atomic_add(weights, b, face_edges[f, 0], (a2 + b2 - c2) / q)
    wp.atomic_add(areas, b, i0, area)
    wp.atomic_add(areas, b, i1, area)
    wp.atomic_add(areas, b, i2, area)


@wp.kernel
def _laplacian_forward_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    offsets: wp.array(dtype=wp.int32),  # (V + 1,)
    neighbors: wp.array(dtype=wp.int32),  # (2E,)
    neighbor_edges: wp.array(dtype=wp.int32),  # (2E,)
    weights: wp.array2d(dtype=Any),  # (1 or B, E)
    areas: wp.array2d(dtype=Any),  # (1 or B, V), read when mode == 2
    mode: int,
    scaled_dir: wp.array2d(dtype=Any),  # (B, V) vec3 out: s_i u_i
    center_dir: wp.array2d(dtype=Any),  # (B, V) vec3 out: c_i u_i
    out: wp.array2d(dtype=Any),  # (B, V) out: |L v_i|
):
    b, i = wp.tid()
    bw = wp.min(b, weights.shape[0] - 1)
    vi = vertices[b, i]
    zero = type(out[b, i])(0.0)
    acc = vi * zero
    wsum = zero
    for k in range(offsets[i], offsets[i + 1]):
        w = weights[bw, neighbor_edges[k]]
        acc += w * vertices[b, neighbors[k]]
        wsum += w
    scale = zero
    center = type(zero)(1.0)
    if mode == 2:
        area = areas[wp.min(b, areas.shape[0] - 1), i]
        if area > zero:
            scale = type(zero)(0.25) / area
        center = scale * wsum
    elif wsum > zero:
        scale = type(zero)(1.0) / wsum
    lv = scale * acc - center * vi
    norm = wp.length(lv)
    u = lv * zero
    if norm > zero:
        u = lv / norm
    scaled_dir[b, i] = scale * u
    center_dir[b, i] = center * u
    out[b, i] = norm


@wp.kernel
def _laplacian_backward_kernel(
    offsets: wp.array(dtype=wp.int32),
    neighbors: wp.array(dtype=wp.int32),
    neighbor_edges: wp.array(dtype=wp.int32),
    weights: wp.array2d(dtype=Any),  # (1 or B, E)
    scaled_dir: wp.array2d(dtype=Any),  # (B, V) vec3
    center_dir: wp.array2d(dtype=Any),  # (B, V) vec3
    adj_out: wp.array2d(dtype=Any),  # (B, V)
    adj_vertices: wp.array2d(dtype=Any),  # (B, V) vec3 out
):
    b, j = wp.tid()
    bw = wp.min(b, weights.shape[0] - 1)
    acc = -adj_out[b, j] * center_dir[b, j]
    for k in range(offsets[j], offsets[j + 1]):
        i = neighbors[k]
        acc += (weights[bw, neighbor_edges[k]] * adj_out[b, i]) * scaled_dir[b, i]
    adj_vertices[b, j] = acc


def _overload_all() -> None:
    for scalar, vec in ((wp.float32, wp.vec3), (wp.float64, wp.vec3d)):
        v2, s2 = wp.array2d(dtype=vec), wp.array2d(dtype=scalar)
        i1, i2 = wp.array(dtype=wp.int32), wp.array2d(dtype=wp.int32)
        wp.overload(_cot_weights_kernel, [v2, i2, i2, scalar, s2, s2])
        wp.overload(_laplacian_forward_kernel, [v2, i1, i1, i1, s2, s2, int, v2, v2, s2])
        wp.overload(_laplacian_backward_kernel, [i1, i1, i1, s2, v2, v2, s2, v2])


_overload_all()


def _cotangent_weights_warp(vertices: Tensor, topology: MeshTopology) -> tuple[Tensor, Tensor]:
    b, dtype = vertices.shape[0], vertices.dtype
    weights = vertices.new_zeros(b, topology.edges.shape[0])
    areas = vertices.new_zeros(b, topology.num_vertices)
    arrays = topology.warp()
    eps = (wp.float64 if dtype == torch.float64 else wp.float32)(reference.COT_AREA_EPS)
    with torch_stream(vertices):
        v = warp_vec3(vertices)
        wp.launch(
            _cot_weights_kernel,
            dim=(b, topology.faces.shape[0]),
            inputs=[v, arrays.faces, arrays.face_edges, eps],
            outputs=[warp_array(weights), warp_array(areas)],
            device=v.device,
        )
    return weights, areas


def cotangent_weights(
    vertices: Tensor,  # (B, V, 3)
    topology: MeshTopology,
    backend: str = "warp",
) -> tuple[Tensor, Tensor]:
    """Cotangent edge weights and vertex areas of a batch of meshes (no gradient).

    Args:
        vertices: (B, V, 3) float32 or float64 positions.
        topology: ``MeshTopology`` of the mesh.
        backend: "warp" or "torch".

    Returns:
        weights (B, E): cot a + cot b of the two angles opposite each edge (one angle on the boundary),
        as the entries of PyTorch3D's ``cot_laplacian``; areas (B, V): summed area of each vertex's faces.
    """
    check_backend(backend)
    check_vertices(vertices, topology)
    topology = topology.to(vertices.device)
    if backend == "torch":
        return reference.cotangent_weights(vertices, topology)
    return _cotangent_weights_warp(vertices.detach(), topology)


class _LaplacianFunction(torch.autograd.Function):
    """|L v_i| (B, V), with the weights (and areas) held constant."""

    @staticmethod
    def forward(ctx, vertices: Tensor, weights: Tensor, areas: Tensor, mode: int, topology: MeshTopology):
        b, v = vertices.shape[:2]
        arrays = topology.warp()
        out = vertices.new_empty(b, v)
        scaled_dir = vertices.new_empty(vertices.shape)
        center_dir = vertices.new_empty(vertices.shape)
        with torch_stream(vertices):
            x = warp_vec3(vertices)
            wp.launch(
                _laplacian_forward_kernel,
                dim=(b, v),
                inputs=[
                    x,
                    arrays.neighbor_offsets,
                    arrays.neighbors,
                    arrays.neighbor_edges,
                    warp_array(weights),
                    warp_array(areas),
                    mode,
                ],
                outputs=[warp_vec3(scaled_dir), warp_vec3(center_dir), warp_array(out)],
                device=x.device,
            )
        ctx.save_for_backward(weights, scaled_dir, center_dir)
        ctx.topology = topology
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, adj_out: Tensor):
        weights, scaled_dir, center_dir = ctx.saved_tensors
        arrays = ctx.topology.warp()
        adj_vertices = scaled_dir.new_empty(scaled_dir.shape)
        with torch_stream(adj_out):
            adj = warp_vec3(adj_vertices)
            wp.launch(
                _laplacian_backward_kernel,
                dim=scaled_dir.shape[:2],
                inputs=[
                    arrays.neighbor_offsets,
                    arrays.neighbors,
                    arrays.neighbor_edges,
                    warp_array(weights),
                    warp_vec3(scaled_dir),
                    warp_vec3(center_dir),
                    warp_array(adj_out),
                ],
                outputs=[adj],
                device=adj.device,
            )
        return adj_vertices, None, None, None, None


def laplacian_smoothing(
    vertices: Tensor,  # (B, V, 3)
    topology: MeshTopology,
    method: str = "uniform",
    reduction: str = "mean",
    backend: str = "warp",
) -> Tensor:
    """Laplacian smoothing loss (PyTorch3D ``mesh_laplacian_smoothing`` semantics).

    Args:
        vertices: (B, V, 3) float32 or float64 positions, on CPU or CUDA.
        topology: ``MeshTopology`` of the mesh (moved to the vertices' device when needed).
        method: "uniform" (L = D^-1 A - I on the edge graph), "cot" (row-normalized cotangent weights)
            or "cotcurv" (cotangent weights over 4 x vertex area: mean-curvature normal).
        reduction: "mean" (scalar) or "none" ((B, V) values |L v_i|).
        backend: "warp" (kernels above) or "torch" (the twin in ``reference``).

    Returns:
        Scalar: mean over the batch and the vertices of |L v_i|; or the (B, V) values.
    """
    check_backend(backend)
    check_choice("method", method, METHODS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_vertices(vertices, topology)
    topology = topology.to(vertices.device)
    if backend == "torch":
        return reference.laplacian_smoothing(vertices, topology, method, reduction)
    if method == "uniform":
        weights = topology.uniform_weights(vertices.dtype)
        areas = weights[:, :0]
    else:
        weights, areas = _cotangent_weights_warp(vertices.detach(), topology)
    values = _LaplacianFunction.apply(vertices, weights, areas, _MODE[method], topology)
    return values.mean() if reduction == "mean" else values
