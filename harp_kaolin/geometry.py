"""Small mesh utilities shared by the hand models, the renderer and the exporters.

Dimension names: B batch, V vertices, F faces, E edges.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _GatherCorners(torch.autograd.Function):
    """``values[:, faces]`` with a flat ``index_add_`` backward (several times faster on CPU than the
    accumulating ``index_put`` that autograd uses for advanced indexing)."""

    @staticmethod
    def forward(ctx, values: Tensor, faces: Tensor) -> Tensor:
        b, v = values.shape[:2]
        rest = values.shape[2:]
        rows = (torch.arange(b, device=values.device)[:, None] * v + faces.reshape(1, -1)).reshape(-1)
        ctx.save_for_backward(rows)
        ctx.shape = values.shape
        out = values.reshape(b * v, *rest).index_select(0, rows)
        return out.reshape(b, *faces.shape, *rest)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        b, v, *rest = ctx.shape
        out = grad.new_zeros(b * v, *rest).index_add_(0, rows, grad.reshape(-1, *rest))
        return out.reshape(ctx.shape), None


def gather_corners(values: Tensor, faces: Tensor) -> Tensor:
    """Per face-corner values ``values[:, faces]``: (B, V, ...) and (F, 3) long -> (B, F, 3, ...)."""
    return _GatherCorners.apply(values, faces)


def face_normals(vertices: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """Per-face normals of a batch of triangle meshes.

    Args:
        vertices: (B, V, 3) positions.
        faces: (F, 3) long vertex indices, counter-clockwise around the outward normal.
        normalize: return unit normals; otherwise the cross product (twice the face area).

    Returns:
        (B, F, 3) normals.
    """
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12) if normalize else n


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (B, V, 3) positions.
        faces: (F, 3) long vertex indices.

    Returns:
        (B, V, 3) unit normals.
    """
    fn = face_normals(vertices, faces, normalize=False)
    acc = torch.zeros_like(vertices)
    for k in range(3):
        acc = acc.index_add(1, faces[:, k], fn)
    return torch.nn.functional.normalize(acc, dim=-1, eps=1e-12)


def unique_edges(faces: Tensor) -> tuple[Tensor, Tensor]:
    """Undirected edges of a triangle mesh and each face's edge ids.

    Args:
        faces: (F, 3) long vertex indices.

    Returns:
        edges (E, 2) with edges[:, 0] < edges[:, 1], sorted lexicographically, and
        face_edges (F, 3): id of edge (v0, v1), (v1, v2), (v2, v0) of each face.
    """
    directed = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=1)  # (F, 3, 2)
    sorted_pairs = directed.sort(dim=-1).values.reshape(-1, 2)
    edges, inverse = torch.unique(sorted_pairs, dim=0, return_inverse=True)
    return edges, inverse.reshape(-1, 3)


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues' formula, smooth at zero angle.

    Args:
        rotvec: (..., 3) axis times angle in radians.

    Returns:
        (..., 3, 3) rotation matrices.
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-8
    # Taylor expansions below 1e-4 rad keep the gradient finite at the identity.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def rigid_transform(rotation: Tensor, translation: Tensor) -> Tensor:
    """4x4 homogeneous matrices from rotations (..., 3, 3) and translations (..., 3)."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)
