"""UV texture lookup and the tangent frames used by normal mapping.

Texture convention (shared with ``usd_export`` and ``AvatarParams``): a texture is a (B or 1, C, Ht, Wt)
image whose row 0 is the TOP of the image and holds v = 1 (v axis up, as in OBJ, glTF and USD
``primvars:st``); column 0 holds u = 0. Texel (i, j) covers u in [j, j+1] / Wt and v in
[Ht-1-i, Ht-i] / Ht; its centre is ``u = (j + 0.5) / Wt``, ``v = 1 - (i + 0.5) / Ht``. Lookups are
bilinear between texel centres and clamp to the border texels outside them.

Tangent space (normal maps): per-vertex tangents follow MikkTSpace (the convention of glTF, USD
``UsdPreviewSurface`` viewers, Blender and Substance): the tangent T points along +u, the bitangent
B along +v, both Gram-Schmidt-orthogonalized against the vertex normal N, and
``B = sign * cross(N, T)`` with sign = +1 where the UV chart keeps the mesh orientation. A normal map
stores the unit tangent-space normal n = (n_T, n_B, n_N) encoded as ``(n + 1) / 2`` (OpenGL / "+Y
green up" convention, as glTF): (0.5, 0.5, 1) = (0, 0, 1) = the unperturbed normal.

Dimension names: B batch, V vertices, F faces, U uv vertices, W wedges (distinct (vertex, uv) pairs),
H W image, Ht Wt texture, C channels, N points.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_texture(texture: Tensor, name: str) -> None:
    if texture.dim() != 4:
        raise ValueError(f"{name} must have shape (B or 1, C, Ht, Wt), got {tuple(texture.shape)}")
    if not texture.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {texture.dtype}")


def uv_to_grid(uv: Tensor) -> Tensor:
    """UV coordinates (v up) to ``grid_sample`` coordinates (align_corners=False, y down).

    Args:
        uv: (..., 2) texture coordinates, (0, 0) = bottom-left corner of the image, (1, 1) = top-right.

    Returns:
        (..., 2) grid coordinates in [-1, 1] for ``torch.nn.functional.grid_sample``.
    """
    return torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], dim=-1)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup, differentiable in the texture and in the UVs.

    Args:
        texture: (B or 1, C, Ht, Wt) image, row 0 = v 1 (see the module docstring).
        uv: (B, N, 2) or (B, H, W, 2) texture coordinates (u right, v up).

    Returns:
        (B, N, C) or (B, H, W, C) sampled values.
    """
    _check_texture(texture, "texture")
    if uv.dim() not in (3, 4) or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape (B, N, 2) or (B, H, W, 2), got {tuple(uv.shape)}")
    b = uv.shape[0]
    if texture.shape[0] not in (1, b):
        raise ValueError(f"texture batch must be 1 or {b} (the uv batch), got {texture.shape[0]}")
    grid = uv_to_grid(uv.to(texture.dtype))
    channels = texture.shape[1]
    if texture.shape[0] == 1 and b > 1:
        # One lookup for every batch item at once: no copies of the texture.
        out = _grid_sample(texture, grid.reshape(1, -1, 1, 2))[0, :, :, 0].T  # (B*N, C)
    else:
        out = _grid_sample(texture, grid.reshape(b, -1, 1, 2))[..., 0].transpose(1, 2)  # (B, N, C)
    return out.reshape(*uv.shape[:-1], channels)


def _grid_sample(texture: Tensor, grid: Tensor) -> Tensor:
    return torch.nn.functional.grid_sample(
        texture, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def sample_texture_packed(texture: Tensor, uv: Tensor, batch_index: Tensor) -> Tensor:
    """Bilinear lookup of points that each belong to one batch item (e.g. the covered pixels).

    Args:
        texture: (B or 1, C, Ht, Wt) image, row 0 = v 1.
        uv: (N, 2) texture coordinates.
        batch_index: (N,) long batch item of each point (ignored when the texture batch is 1).

    Returns:
        (N, C) sampled values.
    """
    _check_texture(texture, "texture")
    if uv.dim() != 2 or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape (N, 2), got {tuple(uv.shape)}")
    if batch_index.shape != uv.shape[:1]:
        raise ValueError(f"batch_index must have shape ({uv.shape[0]},), got {tuple(batch_index.shape)}")
    if texture.shape[0] == 1:
        return sample_texture(texture, uv[None])[0]
    # One lookup per texture: grid_sample pairs texture i with grid i, and the items' N differ.
    out = uv.new_zeros(uv.shape[0], texture.shape[1], dtype=texture.dtype)
    for item in range(texture.shape[0]):
        sel = (batch_index == item).nonzero()[:, 0]
        if sel.numel():
            out = out.index_put((sel,), sample_texture(texture[item : item + 1], uv[sel][None])[0])
    return out


def encode_normals(normals: Tensor) -> Tensor:
    """Unit tangent-space normals (..., 3, ...) in [-1, 1] to the stored normal-map encoding (n + 1) / 2."""
    return (normals + 1) * 0.5


def decode_normals(encoded: Tensor, dim: int = 1) -> Tensor:
    """Stored normal-map values (n + 1) / 2 to unit tangent-space normals (normalized along ``dim``)."""
    return torch.nn.functional.normalize(encoded * 2 - 1, dim=dim, eps=1e-6)


def flat_normal_map(size: int, batch: int = 1, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(batch, 3, size, size) decoded normal map of (0, 0, 1) everywhere: normal mapping off."""
    out = torch.zeros(batch, 3, size, size, dtype=dtype, device=device)
    out[:, 2] = 1
    return out


def wedges(faces: Tensor, face_uvs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct (vertex, uv vertex) pairs of a mesh: the units that carry one tangent frame.

    Vertices on a UV seam belong to several wedges (one per chart), which keeps tangents of different
    charts apart, as MikkTSpace does.

    Args:
        faces: (F, 3) long vertex indices.
        face_uvs: (F, 3) long uv indices.

    Returns:
        wedge_vertex (W,) vertex of each wedge, wedge_uv (W,) its uv index, face_wedges (F, 3).
    """
    pairs = torch.stack([faces.reshape(-1), face_uvs.reshape(-1)], dim=-1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    return unique[:, 0], unique[:, 1], inverse.reshape(faces.shape)


def wedge_signs(uvs: Tensor, face_uvs: Tensor, face_wedges: Tensor, num_wedges: int) -> Tensor:
    """Handedness of each wedge's tangent frame: +1 where its UV chart keeps the mesh orientation.

    A property of the UV layout alone (the sign of the faces' UV areas, majority per wedge), so it is
    computed once per mesh.

    Args:
        uvs: (U, 2); face_uvs: (F, 3) long; face_wedges: (F, 3) long; num_wedges: W.

    Returns:
        (W,) +1 or -1, dtype of ``uvs``.
    """
    t = uvs[face_uvs]  # (F, 3, 2)
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area_sign = torch.sign(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    votes = uvs.new_zeros(num_wedges).index_add(0, face_wedges.reshape(-1), area_sign.repeat_interleave(3))
    return torch.where(votes >= 0, 1.0, -1.0).to(uvs.dtype)


def vertex_tangents(
    vertices: Tensor,
    normals: Tensor,
    faces: Tensor,
    uvs: Tensor,
    face_uvs: Tensor,
    face_wedges: Tensor,
    wedge_vertex: Tensor,
) -> Tensor:
    """MikkTSpace-style unit tangents per wedge, differentiable in the vertices.

    Per face: the unit direction of dP/du from the UV derivatives (sign-corrected where the chart is
    mirrored). Per wedge: the sum over its corners weighted by the corner angle, Gram-Schmidt
    orthogonalized against the vertex normal. Bitangents come from ``bitangents`` (``sign * cross(N, T)``).

    Args:
        vertices: (B, V, 3) positions.
        normals: (B, V, 3) unit vertex normals.
        faces: (F, 3) long vertex indices.
        uvs: (U, 2) texture coordinates.
        face_uvs: (F, 3) long uv indices.
        face_wedges, wedge_vertex: from ``wedges(faces, face_uvs)``.

    Returns:
        (B, W, 3) unit tangents orthogonal to the wedge's vertex normal.
    """
    normalize = torch.nn.functional.normalize
    b, f = vertices.shape[0], faces.shape[0]
    p = vertices[:, faces]  # (B, F, 3, 3): corner k of each face
    edge = p.roll(-1, dims=2) - p  # edge k: corner k -> k + 1
    length = edge.norm(dim=-1).clamp_min(1e-20)
    prev = edge.roll(1, dims=2)  # edge k - 1: corner k - 1 -> k
    cos = -(edge * prev).sum(-1) / (length * length.roll(1, dims=2))
    angles = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))  # (B, F, 3) interior angle at each corner
    t = uvs.to(vertices.dtype)[face_uvs]  # (F, 3, 2)
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area_sign = torch.where(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0] >= 0, 1.0, -1.0).to(vertices.dtype)
    e1, e2 = edge[:, :, 0], -prev[:, :, 0]  # corner 0 -> 1 and corner 0 -> 2
    face_t = e1 * d2[:, 1, None] - e2 * d1[:, 1, None]  # (B, F, 3): dP/du * det
    face_t = normalize(face_t, dim=-1, eps=1e-20) * area_sign[:, None]
    corners = (face_t[:, :, None] * angles[..., None]).reshape(b, 3 * f, 3)
    acc = vertices.new_zeros(b, wedge_vertex.shape[0], 3).index_add(1, face_wedges.reshape(-1), corners)
    n = normals[:, wedge_vertex]
    return normalize(acc - n * (n * acc).sum(-1, keepdim=True), dim=-1, eps=1e-20)


def bitangents(normals: Tensor, tangents: Tensor, signs: Tensor) -> Tensor:
    """``sign * cross(N, T)`` (MikkTSpace / glTF): normals, tangents (..., 3); signs (...,) -> (..., 3)."""
    return signs[..., None] * torch.cross(normals, tangents, dim=-1)


def perturb_normals(normals: Tensor, tangents: Tensor, bitangents: Tensor, tangent_normals: Tensor) -> Tensor:
    """Apply tangent-space normals: ``normalize(n_T * T + n_B * B + n_N * N)``.

    The interpolated frame is used as it is (not re-orthonormalized per pixel; the bitangent is
    ``sign * cross(N, T)`` of the interpolated N and T), as MikkTSpace asks, so that the result matches
    other renderers; a (0, 0, 1) map returns ``normalize(normals)``.

    Args:
        normals, tangents, bitangents: (..., 3) interpolated frame.
        tangent_normals: (..., 3) decoded normal-map values.

    Returns:
        (..., 3) unit shading normals.
    """
    n = (
        tangent_normals[..., 0:1] * tangents
        + tangent_normals[..., 1:2] * bitangents
        + tangent_normals[..., 2:3] * normals
    )
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12)
