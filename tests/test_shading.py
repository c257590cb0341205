"""Texture lookup (v-up convention, gradients), tangent frames, normal mapping, Lambert shading."""

from __future__ import annotations

import math

import pytest
import torch

from harp_kaolin.geometry import vertex_normals
from harp_kaolin.render.shading import ambient_diffuse, composite, lambert
from harp_kaolin.render.texture import (
    bitangents,
    decode_normals,
    encode_normals,
    flat_normal_map,
    perturb_normals,
    sample_texture,
    sample_texture_packed,
    vertex_tangents,
    wedge_signs,
    wedges,
)
from tests.conftest import DEVICES

EXACT_TOL = 1e-6  # float32 lookups and shading that should be exact up to rounding
FRAME_TOL = 1e-5  # orthonormality of tangent frames (float32)


def grid_mesh(n: int = 5, mirror_v: bool = False, bumps: float = 0.0, seed: int = 0):
    """An n x n vertex grid in the z = 0 plane (normal +z), UVs = (x, y) (or (x, -y) mirrored)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    verts = torch.stack([xs, ys, bumps * torch.rand(n, n, generator=g)], -1).reshape(1, -1, 3)
    uvs = torch.stack([xs, 1 - ys if mirror_v else ys], -1).reshape(-1, 2)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces, uvs, faces.clone()


def frames(verts, faces, uvs, face_uvs):
    wedge_vertex, _, face_wedges = wedges(faces, face_uvs)
    normals = vertex_normals(verts, faces)
    t = vertex_tangents(verts, normals, faces, uvs, face_uvs, face_wedges, wedge_vertex)
    signs = wedge_signs(uvs, face_uvs, face_wedges, wedge_vertex.shape[0])
    n = normals[:, wedge_vertex]
    return n, t, bitangents(n, t, signs)


# ------------------------------------------------------------------------------------------ texture
def test_texture_v_axis_up_and_texel_centres():
    ht, wt = 2, 3
    texture = (10 * torch.arange(ht)[:, None] + torch.arange(wt)[None]).float()[None, None]  # row*10 + col
    i, j = torch.meshgrid(torch.arange(ht), torch.arange(wt), indexing="ij")
    uv = torch.stack([(j + 0.5) / wt, 1 - (i + 0.5) / ht], -1).reshape(1, -1, 2)
    got = sample_texture(texture, uv)[0, :, 0]
    torch.testing.assert_close(got, texture.reshape(-1), atol=EXACT_TOL, rtol=0)
    # v = 1 is the top row (row 0), v = 0 the bottom row; u = 0 the left column.
    corners = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]])
    torch.testing.assert_close(sample_texture(texture, corners)[0, :, 0], torch.tensor([0.0, 10.0, 2.0]))


def test_texture_known_image_halves():
    texture = torch.zeros(1, 3, 8, 8)
    texture[:, 0, :4] = 1  # top half of the image red
    texture[:, 2, 4:] = 1  # bottom half blue
    got = sample_texture(texture, torch.tensor([[[0.3, 0.9], [0.7, 0.1]]]))[0]
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def test_texture_batch_shapes_and_packed():
    g = torch.Generator().manual_seed(1)
    shared = torch.rand(1, 4, 6, 5, generator=g)
    per_item = torch.rand(2, 4, 6, 5, generator=g)
    uv = torch.rand(2, 3, 7, 2, generator=g)
    for texture in (shared, per_item):
        dense = sample_texture(texture, uv)
        assert dense.shape == (2, 3, 7, 4)
        for item in range(2):
            one = sample_texture(texture[item % texture.shape[0]][None], uv[item][None])[0]
            torch.testing.assert_close(dense[item], one, atol=EXACT_TOL, rtol=0)
        batch_index = torch.arange(2)[:, None].expand(2, 21).reshape(-1)
        packed = sample_texture_packed(texture, uv.reshape(-1, 2), batch_index)
        torch.testing.assert_close(packed, dense.reshape(-1, 4), atol=EXACT_TOL, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("texture_batch", [1, 2])
def test_texture_gradcheck(device, texture_batch):
    g = torch.Generator().manual_seed(2)
    texture = torch.rand(texture_batch, 2, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    uv = (0.05 + 0.9 * torch.rand(2, 6, 2, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    assert torch.autograd.gradcheck(sample_texture, (texture, uv))


def test_texture_errors_name_argument():
    with pytest.raises(ValueError, match="texture"):
        sample_texture(torch.zeros(3, 4, 4), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="uv"):
        sample_texture(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 3))


# ----------------------------------------------------------------------------------- tangent frames
@pytest.mark.parametrize("mirror_v", [False, True])
def test_tangent_frame_of_a_plane(mirror_v):
    verts, faces, uvs, face_uvs = grid_mesh(mirror_v=mirror_v)
    n, t, b = frames(verts, faces, uvs, face_uvs)
    ones = torch.ones(t.shape[1])
    torch.testing.assert_close(t[0], torch.tensor([1.0, 0.0, 0.0]) * ones[:, None], atol=FRAME_TOL, rtol=0)
    sign = -1.0 if mirror_v else 1.0  # the bitangent follows +v: flips with a mirrored chart
    torch.testing.assert_close(b[0], torch.tensor([0.0, sign, 0.0]) * ones[:, None], atol=FRAME_TOL, rtol=0)
    torch.testing.assert_close(n[0], torch.tensor([0.0, 0.0, 1.0]) * ones[:, None], atol=FRAME_TOL, rtol=0)


def test_tangent_frames_orthonormal_on_a_bumpy_mesh():
    verts, faces, uvs, face_uvs = grid_mesh(n=7, bumps=0.3, seed=3)
    n, t, b = frames(verts, faces, uvs, face_uvs)
    for a, c in ((t, n), (b, n), (t, b)):
        assert (a * c).sum(-1).abs().max() < FRAME_TOL
    for a in (t, b):
        assert (a.norm(dim=-1) - 1).abs().max() < FRAME_TOL
    # Right-handed where the chart keeps the orientation: B = cross(N, T).
    torch.testing.assert_close(b, torch.cross(n, t, dim=-1), atol=FRAME_TOL, rtol=0)


def test_tangent_frames_split_at_uv_seams():
    verts, faces, uvs, face_uvs = grid_mesh(n=3)
    # Give the second half of the faces their own (mirrored) copy of the UVs: a seam along the diagonal.
    face_uvs = face_uvs.clone()
    half = faces.shape[0] // 2
    face_uvs[half:] += uvs.shape[0]
    uvs = torch.cat([uvs, uvs * torch.tensor([1.0, -1.0])])
    wedge_vertex, wedge_uv, _ = wedges(faces, face_uvs)
    assert wedge_vertex.shape[0] > verts.shape[1]
    n, t, b = frames(verts, faces, uvs, face_uvs)
    mirrored = wedge_uv >= uvs.shape[0] // 2
    torch.testing.assert_close(b[0, mirrored, 1], -torch.ones(int(mirrored.sum())), atol=FRAME_TOL, rtol=0)
    torch.testing.assert_close(b[0, ~mirrored, 1], torch.ones(int((~mirrored).sum())), atol=FRAME_TOL, rtol=0)


def test_flat_normal_map_leaves_normals_unchanged():
    verts, faces, uvs, face_uvs = grid_mesh(n=6, bumps=0.4, seed=4)
    n, t, b = frames(verts, faces, uvs, face_uvs)
    flat = decode_normals(encode_normals(flat_normal_map(2)), dim=1)[0, :, 0, 0]
    torch.testing.assert_close(flat, torch.tensor([0.0, 0.0, 1.0]))
    scaled = 0.7 * n  # interpolated normals are not unit length
    got = perturb_normals(scaled, t, b, flat.expand_as(n))
    torch.testing.assert_close(got, n, atol=FRAME_TOL, rtol=0)


def test_normal_map_tilts_towards_u_and_v():
    verts, faces, uvs, face_uvs = grid_mesh()
    n, t, b = frames(verts, faces, uvs, face_uvs)
    a = 0.3
    tilt_u = torch.tensor([math.sin(a), 0.0, math.cos(a)]).expand_as(n)
    tilt_v = torch.tensor([0.0, math.sin(a), math.cos(a)]).expand_as(n)
    # On this plane +u = +x and +v = +y, so the tangent-space normal reads directly in world axes.
    torch.testing.assert_close(perturb_normals(n, t, b, tilt_u), tilt_u, atol=FRAME_TOL, rtol=0)
    torch.testing.assert_close(perturb_normals(n, t, b, tilt_v), tilt_v, atol=FRAME_TOL, rtol=0)


def test_tangents_have_gradients():
    verts, faces, uvs, face_uvs = grid_mesh(n=4, bumps=0.3, seed=5)
    verts = verts.double().requires_grad_()
    wedge_vertex, _, face_wedges = wedges(faces, face_uvs)

    def fn(v):
        normals = vertex_normals(v, faces)
        return vertex_tangents(v, normals, faces, uvs.double(), face_uvs, face_wedges, wedge_vertex)

    assert torch.autograd.gradcheck(fn, (verts,))


# ------------------------------------------------------------------------------------------ shading
def test_lambert_matches_cosine_law():
    g = torch.Generator().manual_seed(6)
    points = torch.rand(50, 3, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=-1)
    light = torch.tensor([0.3, -1.0, 0.2])
    albedo = torch.rand(50, 3, generator=g)
    a = torch.tensor([-0.4])
    k_a, k_d = ambient_diffuse(a)
    torch.testing.assert_close(k_a + k_d, torch.ones(1))
    vis = torch.rand(50, generator=g)
    got = lambert(albedo, normals, points, light, a, vis)
    to_light = light - points
    cos = (to_light * normals).sum(-1) / to_light.norm(dim=-1)
    expected = albedo * (torch.sigmoid(a) + (1 - torch.sigmoid(a)) * (cos.clamp_min(0) * vis)[:, None])
    torch.testing.assert_close(got, expected, atol=EXACT_TOL, rtol=0)


def test_composite_over_white():
    colour = torch.full((1, 2, 2, 3), 0.25)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    out = composite(colour, mask)
    torch.testing.assert_close(out[0, :, :, 0], torch.tensor([[0.25, 1.0], [0.625, 1.0]]))
