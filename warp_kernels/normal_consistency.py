"""Normal consistency between adjacent faces as a Warp kernel (PyTorch3D ``mesh_normal_consistency``).

For faces (v0, v1, a) and (v1, v0, b) sharing the edge (v0, v1), v0 < v1,

    n0 = (v1 - v0) x (a - v0),   n1 = (b - v0) x (v1 - v0),   nc = 1 - cos(n0, n1)

(n0 and n1 do not depend on the faces' winding), and the loss is the mean of nc over all pairs of faces
sharing an edge and over the batch. The cosine clamps each normal's length at 1e-8, as
``torch.cosine_similarity`` does. The kernel is straight-line code, so its backward pass is Warp's own
adjoint (``adjoint=True``).
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


@wp.kernel
def _normal_consistency_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    pairs: wp.array2d(dtype=wp.int32),  # (P, 4): v0, v1, a, b
    eps: Any,
    out: wp.array2d(dtype=Any),  # (B, P) out: 1 - cos
):
    b, p = wp.tid()
    p0 = vertices[b, pairs[p, 0]]
    edge = vertices[b, pairs[p, 1]] - p0
    n0 = wp.cross(edge, vertices[b, pairs[p, 2]] - p0)
    n1 = wp.cross(vertices[b, pairs[p, 3]] - p0, edge)
    cos = wp.dot(n0, n1) / (wp.max(wp.length(n0), eps) * wp.max(wp.length(n1), eps))
    out[b, p] = type(eps)(1.0) - cos


def _overload_all() -> None:
    for scalar, vec in ((wp.float32, wp.vec3), (wp.float64, wp.vec3d)):
        v2, s2, i2 = wp.array2d(dtype=vec), wp.array2d(dtype=scalar), wp.array2d(dtype=wp.int32)
        wp.overload(_normal_consistency_kernel, [v2, i2, scalar, s2])


_overload_all()


def _launch(vertices: Tensor, topology: MeshTopology, out: Tensor, adj_vertices=None, adj_out=None):
    """Forward launch, or the adjoint launch when the adjoint tensors are given."""
    scalar = wp.float64 if vertices.dtype == torch.float64 else wp.float32
    eps = scalar(reference.NORMAL_EPS)
    pairs = topology.warp().face_pairs
    with torch_stream(vertices):
        x = warp_vec3(vertices)
        adjoint = adj_vertices is not None
        wp.launch(
            _normal_consistency_kernel,
            dim=(vertices.shape[0], topology.face_pairs.shape[0]),
            inputs=[x, pairs, eps],
            outputs=[warp_array(out)],
            adj_inputs=[warp_vec3(adj_vertices), None, scalar(0.0)] if adjoint else [],
            adj_outputs=[warp_array(adj_out)] if adjoint else [],
            adjoint=adjoint,
            device=x.device,
        )


class _NormalConsistencyFunction(torch.autograd.Function):
    """1 - cos for each pair of faces sharing an edge (B, P)."""

    @staticmethod
    def forward(ctx, vertices: Tensor, topology: MeshTopology):
        out = vertices.new_empty(vertices.shape[0], topology.face_pairs.shape[0])
        _launch(vertices, topology, out)
        ctx.save_for_backward(vertices)
        ctx.topology = topology
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, adj_out: Tensor):
        (vertices,) = ctx.saved_tensors
        adj_vertices = vertices.new_zeros(vertices.shape)
        out = vertices.new_empty(adj_out.shape)
        _launch(vertices, ctx.topology, out, adj_vertices, adj_out)
        return adj_vertices, None


def normal_consistency(
    vertices: Tensor,  # (B, V, 3)
    topology: MeshTopology,
    reduction: str = "mean",
    backend: str = "warp",
) -> Tensor:
    """Normal consistency loss (PyTorch3D ``mesh_normal_consistency`` semantics).

    Args:
        vertices: (B, V, 3) float32 or float64 positions, on CPU or CUDA.
        topology: ``MeshTopology`` of the mesh (moved to the vertices' device when needed).
        reduction: "mean" (scalar) or "none" ((B, P) values, P = ``topology.face_pairs.shape[0]``).
        backend: "warp" or "torch" (the twin in ``reference``).

    Returns:
        Scalar: mean of 1 - cos(n0, n1) over the pairs of faces sharing an edge and over the batch
        (0 for a mesh without such pairs); or the (B, P) values.
    """
    check_backend(backend)
    check_choice("reduction", reduction, REDUCTIONS)
    check_vertices(vertices, topology)
    topology = topology.to(vertices.device)
    if backend == "torch":
        return reference.normal_consistency(vertices, topology, reduction)
    values = _NormalConsistencyFunction.apply(vertices, topology)
    if reduction == "none":
        return values
    return values.mean() if values.numel() else values.sum()
