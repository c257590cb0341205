"""glTF binary (.glb) export through trimesh: the static textured mesh, for tools without USD.

No skin or animation: one frame of the sequence (frame 0 by default) posed with the full skinning
weights and turned into glTF space (Y up, meters) by ``CAMERA_TO_USD``, or the rest mesh (turned Y up by
``model_to_usd``, as in the USD files) with ``frame=None``. Vertices are split where a vertex has several
UVs (glTF UVs are per vertex).
Material: PBR, baseColorTexture = albedo (sRGB, as glTF defines it), normalTexture = the tangent-space
normal map (glTF's convention is ours: +Y green up, (n + 1) / 2), metallic 0, roughness 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usd_export.avatar import CAMERA_TO_USD, AvatarAsset, vertex_normals


def _pil(image):
    from PIL import Image

    from harp_kaolin.io import to_uint8

    return None if image is None else Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image))


def export_glb(asset: AvatarAsset, path: str | Path, frame: int | None = 0) -> Path:
    """Write the textured mesh of one frame as a .glb file.

    Args:
        asset: the avatar.
        path: output .glb file.
        frame: frame index to pose the mesh in, or None for the rest mesh; both in glTF space (Y up).

    Returns:
        The path written.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"path must end with .glb, got {path.name!r}")
    if frame is None:
        points = asset.rest_points_usd()
    else:
        if not -asset.num_frames <= frame < asset.num_frames:
            raise ValueError(f"frame must be in [0, {asset.num_frames}), got {frame}")
        posed = asset.posed_points()[frame]
        points = posed @ CAMERA_TO_USD[:3, :3].T
    normals = vertex_normals(points, asset.faces)
    # One glTF vertex per distinct (vertex, uv) corner pair.
    pairs = np.stack([asset.faces.ravel(), asset.face_uvs.ravel()], axis=1)
    wedges, corner_to_wedge = np.unique(pairs, axis=0, return_inverse=True)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=_pil(asset.albedo),
        normalTexture=_pil(asset.normal_map),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    mesh = trimesh.Trimesh(
        vertices=points[wedges[:, 0]],
        faces=corner_to_wedge.reshape(-1, 3),
        vertex_normals=normals[wedges[:, 0]],
        visual=trimesh.visual.TextureVisuals(uv=asset.uvs[wedges[:, 1]], material=material),
        process=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.glb")
    mesh.export(partial, file_type="glb", include_normals=True)
    partial.replace(path)
    return path
