"""HARP's losses, each a plain function (tests call them directly).

Units are chosen so that the paper's weights (Table C.1) balance at this project's meter scale:
geometry regularizers see the mesh in decimeters (a hand is then about unit size, like the normalized
meshes of PyTorch3D for which those weights were tuned); the keypoint term is a mean distance in meters;
the displacement term is a mean square in centimeters.
"""

from __future__ import annotations

import torch
from torch import Tensor

MESH_SCALE = 10.0  # meters -> decimeters for the geometry regularizers


def silhouette_loss(soft_mask: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 between the rendered soft silhouette (B, H, W) and the target mask (B, H, W)."""
    return (soft_mask - mask).abs().mean()


def keypoint_loss(keypoints: Tensor, target: Tensor) -> Tensor:
    """Mean Euclidean distance (meters) between keypoints (B, 21, 3) and their initialization (B, 21, 3)."""
    return torch.linalg.norm(keypoints - target, dim=-1).mean()


def displacement_loss(displacement: Tensor) -> Tensor:
    """Mean square of the per-vertex displacement, in centimeters squared."""
    return (displacement * 100.0).square().mean()


def photometric_loss(image: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 over the pixels inside ``mask`` (B, H, W) between images (B, H, W, 3)."""
    weight = mask[..., None].expand_as(image)
    return ((image - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def erode_mask(mask: Tensor, pixels: int) -> Tensor:
    """Binary erosion of (B, H, W) masks by a (2p+1)^2 square."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    return 1.0 - torch.nn.functional.max_pool2d((1.0 - mask)[:, None], k, stride=1, padding=pixels)[:, 0]


def shifted(texture: Tensor, std_px: float, generator: torch.Generator | None = None) -> Tensor:
    """The texture (1, C, H, W) resampled at texel positions shifted by Gaussian offsets of ``std_px``."""
    _, _, h, w = texture.shape
    ys, xs = torch.meshgrid(
        torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=texture.device),
        torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=texture.device),
        indexing="ij",
    )
    noise = torch.randn(2, h, w, generator=generator).to(texture.device) * std_px
    grid = torch.stack([xs + noise[0] * 2 / w, ys + noise[1] * 2 / h], dim=-1)[None]
    return torch.nn.functional.grid_sample(
        texture, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def texture_smoothness_loss(texture: Tensor, std_px: float = 2.0, generator: torch.Generator | None = None):
    """L1 between a UV map (1, C, H, W) and itself shifted by a random Gaussian offset (HARP)."""
    return (texture - shifted(texture, std_px, generator)).abs().mean()


def normal_smoothness_loss(normal_map: Tensor, std_px: float = 2.0, generator: torch.Generator | None = None):
    """Smoothness of the unit normal map (1, 3, H, W) plus its L1 pull towards (0, 0, 1)."""
    flat = torch.zeros_like(normal_map)
    flat[:, 2] = 1.0
    return texture_smoothness_loss(normal_map, std_px, generator) + (normal_map - flat).abs().mean()
