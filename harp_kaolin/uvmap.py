"""UV-space helpers: which texels a mesh uses, and moving textures between UV layouts."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def uv_coverage(uvs: Tensor, face_uvs: Tensor, size: int) -> np.ndarray:
    """(size, size) bool mask of the texels covered by the UV triangles (row 0 = v 1).

    Args:
        uvs: (U, 2) UV coordinates in [0, 1], v up.
        face_uvs: (F, 3) indices into ``uvs``.
        size: texture resolution.
    """
    import cv2

    px = uvs.detach().cpu().numpy().astype(np.float64).copy()
    px[:, 0] = px[:, 0] * size - 0.5
    px[:, 1] = (1 - px[:, 1]) * size - 0.5
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel precision of cv2.fillPoly
    tris = np.round(px[face_uvs.cpu().numpy()] * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, list(tris), 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def resample_from_original_layout(
    texture: np.ndarray, scale: float, offset: np.ndarray, size: int
) -> np.ndarray:
    """A texture stored in a model's original UV layout, resampled into the normalized layout.

    ``new_uv = original_uv * scale + offset`` (see ``harp_kaolin.hand.base.normalize_uv_layout``).

    Args:
        texture: (H, W, C) float image in the original layout (row 0 = v 1).
        scale, offset: the layout map of the hand model.
        size: resolution of the output.

    Returns:
        (size, size, C) float image in the normalized layout, bilinear.
    """
    c = (np.arange(size) + 0.5) / size
    u_new, v_new = np.meshgrid(c, 1 - c)
    u0 = (u_new - offset[0]) / scale
    v0 = (v_new - offset[1]) / scale
    t = torch.from_numpy(np.ascontiguousarray(texture, dtype=np.float32)).permute(2, 0, 1)[None]
    grid = torch.from_numpy(np.stack([2 * u0 - 1, 1 - 2 * v0], -1)).float()[None]
    out = torch.nn.functional.grid_sample(
        t, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0].permute(1, 2, 0).numpy()
