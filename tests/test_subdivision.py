"""Linear midpoint subdivision: counts, exact midpoints, UV seams, areas, gradients."""

from __future__ import annotations

import torch

from harp_kaolin.geometry import unique_edges
from harp_kaolin.hand.subdivision import Subdivision, apply_operator

ATOL = 1e-12


def seamed_cube():
    """A cube (8 vertices, 12 faces) with a cross-shaped UV layout: 14 UV vertices and seams."""
    v = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
        dtype=torch.float64,
    )
    quads = [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [3, 0, 4, 7]]
    faces = torch.tensor([[q[0], q[1], q[2]] for q in quads] + [[q[0], q[2], q[3]] for q in quads])
    # Each quad gets its own 4 UV corners in a 3x2 atlas, so every cube edge is a seam.
    uvs, face_uvs = [], []
    for k, _ in enumerate(quads):
        ox, oy = (k % 3) / 3, (k // 3) / 2
        base = len(uvs)
        uvs += [[ox, oy], [ox + 0.3, oy], [ox + 0.3, oy + 0.45], [ox, oy + 0.45]]
        face_uvs.append([base, base + 1, base + 2])
    for k in range(6):
        base = 4 * k
        face_uvs.append([base, base + 2, base + 3])
    return v, faces, torch.tensor(uvs, dtype=torch.float64), torch.tensor(face_uvs)


def tri_area(p: torch.Tensor) -> torch.Tensor:
    """Areas of triangles (N, 3, 2|3)."""
    a, b = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    if p.shape[-1] == 2:
        return 0.5 * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).abs()
    return 0.5 * torch.linalg.norm(torch.cross(a, b, dim=-1), dim=-1)


def test_counts_one_and_two_levels():
    v, f, uv, fuv = seamed_cube()
    e = unique_edges(f)[0].shape[0]
    s1 = Subdivision.build(f, 8, fuv, uv.shape[0], 1)
    assert s1.num_vertices == 8 + e and s1.faces.shape == (48, 3)
    e_uv = unique_edges(fuv)[0].shape[0]
    assert s1.uv_op.shape == (uv.shape[0] + e_uv, uv.shape[0])
    s2 = Subdivision.build(f, 8, fuv, uv.shape[0], 2)
    e1 = unique_edges(s1.faces)[0].shape[0]
    assert s2.num_vertices == s1.num_vertices + e1 and s2.faces.shape == (192, 3)


def test_exact_midpoints_and_corners():
    v, f, uv, fuv = seamed_cube()
    sub = Subdivision.build(f, 8, fuv, uv.shape[0], 1)
    vs = apply_operator(sub.vertex_op, v)
    assert torch.equal(vs[:8], v)
    edges = unique_edges(f)[0]
    assert torch.allclose(vs[8:], 0.5 * (v[edges[:, 0]] + v[edges[:, 1]]), atol=ATOL)


def test_uv_seams_and_areas():
    v, f, uv, fuv = seamed_cube()
    sub = Subdivision.build(f, 8, fuv, uv.shape[0], 1)
    uvs = apply_operator(sub.uv_op, uv)
    assert sub.face_uvs.min() >= 0 and sub.face_uvs.max() < uvs.shape[0]
    assert sub.faces.min() >= 0 and sub.faces.max() < sub.num_vertices
    # Every child has a quarter of its parent's area, in 3D and in UV space.
    vs = apply_operator(sub.vertex_op, v)
    for pts, faces, sub_pts, sub_faces in [(v, f, vs, sub.faces), (uv, fuv, uvs, sub.face_uvs)]:
        parent = tri_area(pts[faces]).repeat_interleave(4)
        assert torch.allclose(tri_area(sub_pts[sub_faces]), parent / 4, atol=ATOL)

    # Position and UV of each child corner are the same combination of the parent's corners: compare
    # each corner's barycentric coordinates in the parent computed from 3D and from UV.
    def bary(points, parent_faces, child_faces):
        p = points[parent_faces].repeat_interleave(4, 0)  # (4F, 3, d)
        q = points[child_faces]  # (4F, 3, d)
        m = (p[:, 1:] - p[:, :1]).transpose(1, 2)  # (4F, d, 2)
        sol = torch.linalg.lstsq(m, (q - p[:, :1]).transpose(1, 2)).solution  # (4F, 2, 3)
        return sol

    assert torch.allclose(bary(vs, f, sub.faces), bary(uvs, fuv, sub.face_uvs), atol=1e-9)


def test_batched_and_differentiable():
    v, f, uv, fuv = seamed_cube()
    sub = Subdivision.build(f, 8, fuv, uv.shape[0], 2)
    x = torch.randn(3, 8, 3, dtype=torch.float64, requires_grad=True)
    out = apply_operator(sub.vertex_op, x)
    assert out.shape == (3, sub.num_vertices, 3)
    for b in range(3):
        assert torch.allclose(out[b], apply_operator(sub.vertex_op, x[b]))
    assert torch.autograd.gradcheck(lambda t: apply_operator(sub.vertex_op, t), (x,))


def test_skin_weights_stay_normalized():
    v, f, uv, fuv = seamed_cube()
    sub = Subdivision.build(f, 8, fuv, uv.shape[0], 2)
    w = torch.rand(8, 5, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    ws = apply_operator(sub.vertex_op, w)
    assert torch.allclose(ws.sum(1), torch.ones(sub.num_vertices, dtype=torch.float64), atol=ATOL)
