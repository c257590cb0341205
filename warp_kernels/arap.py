"""As-rigid-as-possible energies as Warp kernels.

Two variants, both against a template (rest) mesh with the same connectivity:

- ``method="edge"`` (HARP's term): mean over the edges (and the batch) of (|v_i - v_j| - |t_i - t_j|)^2,
  with t the template. Straight-line kernel; its backward pass is Warp's adjoint (``adjoint=True``) and
  reaches the template too.
- ``method="rigid"`` (Sorkine and Alexa 2007): per vertex the best-fit rotation R_i of its edge fan,
  R_i = argmin_R sum_j w_ij |(v_i - v_j) - R (t_i - t_j)|^2 (SVD of the 3x3 covariance, ``wp.svd3``,
  reflection removed), and the energy sum_i sum_j w_ij |(v_i - v_j) - R_i (t_i - t_j)|^2 divided by
  sum_i sum_j w_ij, averaged over the batch. Weights: 1, or cot a + cot b of the template clamped at 0.
  Because each R_i is a minimizer, no gradient flows through it (envelope theorem): for fan energies
  e_i with upstream gradients g_i, d(sum_i g_i e_i)/dv_i = 2 sum_j w_ij ((g_i + g_j)(v_i - v_j)
  - (g_i R_i + g_j R_j)(t_i - t_j)). The backward kernel gathers this over each vertex's neighbours
  (no atomics, no SVD derivative, so no instability at repeated singular values). The template gets
  no gradient in this variant.
"""

from __future__ import annotations

from typing import Any

import torch
import warp as wp
from torch import Tensor
from torch.autograd.function import once_differentiable

from warp_kernels import reference
from warp_kernels.laplacian import _cotangent_weights_warp
from warp_kernels.mesh_topology import (
    REDUCTIONS,
    MeshTopology,
    check_backend,
    check_choice,
    check_template,
    check_vertices,
    torch_stream,
    warp_array,
    warp_vec3,
)

METHODS = ("edge", "rigid")
WEIGHTS = ("uniform", "cot")


@wp.kernel
def _edge_energy_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    rest_pos: wp.array2d(dtype=Any),  # (1 or B, V) vec3
    edges: wp.array2d(dtype=wp.int32),  # (E, 2)
    out: wp.array2d(dtype=Any),  # (B, E) out
):
    b, e = wp.tid()
    i, j = edges[e, 0], edges[e, 1]
    t = wp.min(b, rest_pos.shape[0] - 1)
    d = wp.length(vertices[b, i] - vertices[b, j]) - wp.length(rest_pos[t, i] - rest_pos[t, j])
    out[b, e] = d * d


@wp.kernel
def _rigid_forward_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    rest_pos: wp.array2d(dtype=Any),  # (1 or B, V) vec3
    offsets: wp.array(dtype=wp.int32),  # (V + 1,)
    neighbors: wp.array(dtype=wp.int32),  # (2E,)
    neighbor_edges: wp.array(dtype=wp.int32),  # (2E,)
    weights: wp.array2d(dtype=Any),  # (1 or B, E)
    rotations: wp.array2d(dtype=Any),  # (B, V) mat33 out
    out: wp.array2d(dtype=Any),  # (B, V) out: weighted sum of squared residuals of the fan
):
    b, i = wp.tid()
    t = wp.min(b, rest_pos.shape[0] - 1)
    bw = wp.min(b, weights.shape[0] - 1)
    ti = rest_pos[t, i]
    vi = vertices[b, i]
    zero = type(out[b, i])(0.0)
    cov = wp.outer(ti, vi) * zero
    for k in range(offsets[i], offsets[i + 1]):
        j = neighbors[k]
        cov += weights[bw, neighbor_edges[k]] * wp.outer(ti - rest_pos[t, j], vi - vertices[b, j])
    # svd3 returns U, V with det +1 and a signed last singular value, so V U^T is already the best
    # proper rotation (Sorkine and Alexa's sign flip of the smallest singular vector is built in).
    # It runs in float64: in float32 its fixed Jacobi sweeps can be off by 1e-2 on close singular values.
    u, sigma, v = wp.svd3(wp.mat33d(cov))
    rotation = type(cov)(v * wp.transpose(u))
    rotations[b, i] = rotation
    energy = zero
    for k in range(offsets[i], offsets[i + 1]):
        j = neighbors[k]
        r = (vi - vertices[b, j]) - rotation * (ti - rest_pos[t, j])
        energy += weights[bw, neighbor_edges[k]] * wp.dot(r, r)
    out[b, i] = energy


@wp.kernel
def _rigid_backward_kernel(
    vertices: wp.array2d(dtype=Any),  # (B, V) vec3
    rest_pos: wp.array2d(dtype=Any),  # (1 or B, V) vec3
    offsets: wp.array(dtype=wp.int32),
    neighbors: wp.array(dtype=wp.int32),
    neighbor_edges: wp.array(dtype=wp.int32),
    weights: wp.array2d(dtype=Any),  # (1 or B, E)
    rotations: wp.array2d(dtype=Any),  # (B, V) mat33
    adj_out: wp.array2d(dtype=Any),  # (B, V)
    adj_vertices: wp.array2d(dtype=Any),  # (B, V) vec3 out
):
    b, i = wp.tid()
    t = wp.min(b, rest_pos.shape[0] - 1)
    bw = wp.min(b, weights.shape[0] - 1)
    ti = rest_pos[t, i]
    vi = vertices[b, i]
    gi = adj_out[b, i]
    gri = gi * rotations[b, i]
    acc = vi * type(gi)(0.0)
    for k in range(offsets[i], offsets[i + 1]):
        j = neighbors[k]
        gj = adj_out[b, j]
        posed = vi - vertices[b, j]
        rest = ti - rest_pos[t, j]
        acc += weights[bw, neighbor_edges[k]] * ((gi + gj) * posed - (gri + gj * rotations[b, j]) * rest)
    adj_vertices[b, i] = type(gi)(2.0) * acc


def _overload_all() -> None:
    for scalar, vec, mat in ((wp.float32, wp.vec3, wp.mat33), (wp.float64, wp.vec3d, wp.mat33d)):
        v2, s2, m2 = wp.array2d(dtype=vec), wp.array2d(dtype=scalar), wp.array2d(dtype=mat)
        i1, i2 = wp.array(dtype=wp.int32), wp.array2d(dtype=wp.int32)
        wp.overload(_edge_energy_kernel, [v2, v2, i2, s2])
        wp.overload(_rigid_forward_kernel, [v2, v2, i1, i1, i1, s2, m2, s2])
        wp.overload(_rigid_backward_kernel, [v2, v2, i1, i1, i1, s2, m2, s2, v2])


_overload_all()


def _maybe_vec3(x: Tensor | None):
    return None if x is None else warp_vec3(x)


def _mat33(x: Tensor):
    return warp_array(x, wp.mat33d if x.dtype == torch.float64 else wp.mat33)


class _EdgeEnergyFunction(torch.autograd.Function):
    """(|v_i - v_j| - |t_i - t_j|)^2 for each edge (B, E)."""

    @staticmethod
    def forward(ctx, vertices: Tensor, template: Tensor, topology: MeshTopology):
        out = vertices.new_empty(vertices.shape[0], topology.edges.shape[0])
        _launch_edge(vertices, template, topology, out)
        ctx.save_for_backward(vertices, template)
        ctx.topology = topology
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, adj_out: Tensor):
        vertices, template = ctx.saved_tensors
        adj_vertices = vertices.new_zeros(vertices.shape)
        adj_template = template.new_zeros(template.shape) if ctx.needs_input_grad[1] else None
        out = vertices.new_empty(adj_out.shape)
        _launch_edge(vertices, template, ctx.topology, out, (adj_vertices, adj_template, adj_out))
        return adj_vertices, adj_template, None


def _launch_edge(vertices, template, topology, out, adjoints=None):
    """Forward launch, or the adjoint launch when ``adjoints`` = (adj_vertices, adj_template, adj_out)."""
    with torch_stream(vertices):
        x = warp_vec3(vertices)
        wp.launch(
            _edge_energy_kernel,
            dim=(vertices.shape[0], topology.edges.shape[0]),
            inputs=[x, warp_vec3(template), topology.warp().edges],
            outputs=[warp_array(out)],
            adj_inputs=[] if adjoints is None else [*(_maybe_vec3(a) for a in adjoints[:2]), None],
            adj_outputs=[] if adjoints is None else [warp_array(adjoints[2])],
            adjoint=adjoints is not None,
            device=x.device,
        )


class _RigidEnergyFunction(torch.autograd.Function):
    """Weighted sums of squared rigid residuals over each vertex's fan (B, V); template, weights constant."""

    @staticmethod
    def forward(ctx, vertices: Tensor, template: Tensor, weights: Tensor, topology: MeshTopology):
        b, v = vertices.shape[:2]
        arrays = topology.warp()
        out = vertices.new_empty(b, v)
        rotations = vertices.new_empty(b, v, 3, 3)
        inputs = [arrays.neighbor_offsets, arrays.neighbors, arrays.neighbor_edges, warp_array(weights)]
        with torch_stream(vertices):
            x = warp_vec3(vertices)
            wp.launch(
                _rigid_forward_kernel,
                dim=(b, v),
                inputs=[x, warp_vec3(template), *inputs],
                outputs=[_mat33(rotations), warp_array(out)],
                device=x.device,
            )
        ctx.save_for_backward(vertices, template, weights, rotations)
        ctx.topology = topology
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, adj_out: Tensor):
        vertices, template, weights, rotations = ctx.saved_tensors
        arrays = ctx.topology.warp()
        adj_vertices = vertices.new_empty(vertices.shape)
        inputs = [arrays.neighbor_offsets, arrays.neighbors, arrays.neighbor_edges, warp_array(weights)]
        with torch_stream(adj_out):
            adj = warp_vec3(adj_vertices)
            wp.launch(
                _rigid_backward_kernel,
                dim=vertices.shape[:2],
                inputs=[
                    warp_vec3(vertices),
                    warp_vec3(template),
                    *inputs,
                    _mat33(rotations),
                    warp_array(adj_out),
                ],
                outputs=[adj],
                device=adj.device,
            )
        return adj_vertices, None, None, None


def arap_energy(
    vertices: Tensor,  # (B, V, 3)
    template: Tensor,  # (V, 3), (1, V, 3) or (B, V, 3)
    topology: MeshTopology,
    method: str = "edge",
    weights: str = "uniform",
    reduction: str = "mean",
    backend: str = "warp",
) -> Tensor:
    """As-rigid-as-possible energy of deformed meshes against their template.

    Args:
        vertices: (B, V, 3) float32 or float64 deformed positions, on CPU or CUDA.
        template: (V, 3), (1, V, 3) or (B, V, 3) rest positions, same dtype and device.
        topology: ``MeshTopology`` of the mesh (moved to the vertices' device when needed).
        method: "edge" (HARP: squared edge-length change) or "rigid" (Sorkine and Alexa, with per-vertex
            best-fit rotations).
        weights: edge weights of "rigid": "uniform" or "cot" (template cotangents, clamped at 0).
        reduction: "mean" (scalar) or "none": "edge" gives (B, E) squared length changes, "rigid" (B, V)
            fan energies sum_j w_ij |r_ij|^2 scaled by V / sum_ij w_ij (so that their mean is the energy).
        backend: "warp" or "torch" (the twin in ``reference``).

    Returns:
        Scalar energy averaged over the batch: "edge" is the mean over edges, "rigid" the weighted sum
        over vertices and their edges divided by the sum of the weights. Or the values of ``reduction``.
    """
    check_backend(backend)
    check_choice("method", method, METHODS)
    check_choice("weights", weights, WEIGHTS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_vertices(vertices, topology)
    template = check_template(template, vertices, topology)
    topology = topology.to(vertices.device)
    if backend == "torch":
        return reference.arap_energy(vertices, template, topology, method, weights, reduction)
    if method == "edge":
        values = _EdgeEnergyFunction.apply(vertices, template, topology)
    else:
        template = template.detach()
        if weights == "uniform":
            w = topology.uniform_weights(vertices.dtype)
        else:
            w = _cotangent_weights_warp(template, topology)[0].clamp_min_(0)
        fans = _RigidEnergyFunction.apply(vertices, template, w, topology)
        values = fans * (topology.num_vertices / (2 * w.sum(-1, keepdim=True)))  # both ends of each edge
    return values.mean() if reduction == "mean" else values
