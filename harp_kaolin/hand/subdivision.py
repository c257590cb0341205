"""Linear midpoint subdivision of triangle meshes as a precomputed sparse operator.

One level inserts a vertex at the midpoint of every edge and splits each face into four. Positions and
UV coordinates have their own index sets (a UV seam splits UV vertices but not positions), so each gets
its own operator: ``subdivided = S @ values`` for positions, skinning weights or UVs alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from harp_kaolin.geometry import unique_edges


def _one_level(faces: Tensor, num_vertices: int) -> tuple[scipy.sparse.csr_matrix, Tensor]:
    """Sparse (V + E, V) midpoint operator and the (4F, 3) faces of one subdivision level."""
    edges, face_edges = unique_edges(faces)
    num_edges = edges.shape[0]
    rows = np.concatenate([np.arange(num_vertices), num_vertices + np.repeat(np.arange(num_edges), 2)])
    cols = np.concatenate([np.arange(num_vertices), edges.reshape(-1).numpy()])
    vals = np.concatenate([np.ones(num_vertices), np.full(2 * num_edges, 0.5)])
    op = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(num_vertices + num_edges, num_vertices))
    a, b, c = faces.unbind(-1)
    ab, bc, ca = (num_vertices + face_edges).unbind(-1)
    # Corner triangles keep the parent's winding; the centre one is (ab, bc, ca).
    new_faces = torch.stack(
        [
            torch.stack([a, ab, ca], -1),
            torch.stack([ab, b, bc], -1),
            torch.stack([ca, bc, c], -1),
            torch.stack([ab, bc, ca], -1),
        ],
        dim=1,
    ).reshape(-1, 3)
    return op, new_faces


def subdivision_operator(faces: Tensor, num_vertices: int, levels: int) -> tuple[Tensor, Tensor]:
    """Compose ``levels`` midpoint subdivisions.

    Args:
        faces: (F, 3) long vertex indices.
        num_vertices: V, the number of vertices the faces index.
        levels: number of subdivision levels (0 gives the identity).

    Returns:
        operator: sparse (V_sub, V) float64 matrix with rows summing to 1.
        faces: (4**levels * F, 3) long indices into the subdivided vertices.
    """
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    op = scipy.sparse.identity(num_vertices, format="csr")
    n = num_vertices
    for _ in range(levels):
        step, faces = _one_level(faces, n)
        op = step @ op
        n = step.shape[0]
    coo = op.tocoo()
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    tensor = torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape, check_invariants=True)
    return tensor.coalesce(), faces


@dataclass(frozen=True)
class Subdivision:
    """Precomputed subdivision of a mesh with separate position and UV index sets.

    Attributes:
        levels: number of midpoint subdivision levels.
        vertex_op: sparse (V_sub, V) operator for per-vertex values (positions, skinning weights).
        faces: (F_sub, 3) long, F_sub = 4**levels * F.
        uv_op: sparse (U_sub, U) operator for UV coordinates.
        face_uvs: (F_sub, 3) long indices into the subdivided UVs.
    """

    levels: int
    vertex_op: Tensor
    faces: Tensor
    uv_op: Tensor
    face_uvs: Tensor

    @staticmethod
    def build(faces: Tensor, num_vertices: int, face_uvs: Tensor, num_uvs: int, levels: int) -> Subdivision:
        vertex_op, sub_faces = subdivision_operator(faces.cpu().long(), num_vertices, levels)
        uv_op, sub_face_uvs = subdivision_operator(face_uvs.cpu().long(), num_uvs, levels)
        return Subdivision(levels, vertex_op, sub_faces, uv_op, sub_face_uvs)

    @property
    def num_vertices(self) -> int:
        return self.vertex_op.shape[0]

    def to(self, device: torch.device | str) -> Subdivision:
        return Subdivision(
            self.levels,
            self.vertex_op.to(device),
            self.faces.to(device),
            self.uv_op.to(device),
            self.face_uvs.to(device),
        )


def apply_operator(op: Tensor, values: Tensor) -> Tensor:
    """Apply a sparse (N_out, N) operator to batched per-element values, differentiably.

    Args:
        op: sparse (N_out, N).
        values: (N, C) or (B, N, C).

    Returns:
        (N_out, C) or (B, N_out, C), in the dtype of ``values``.
    """
    op = op.to(dtype=values.dtype, device=values.device)
    if values.dim() == 2:
        return torch.sparse.mm(op, values)
    b, n, c = values.shape
    flat = values.permute(1, 0, 2).reshape(n, b * c)
    return torch.sparse.mm(op, flat).reshape(-1, b, c).permute(1, 0, 2)
