"""Everything learnable, in one module with named parameter groups.

Groups (shapes): pose (T, P, 3) rotation vectors, global_orient (T, 3), transl (T, 3) per frame; shape
(1, S), displacement (V_sub,) meters along the rest normals, albedo (1, 3, Ht, Wt) linear reflectance,
normal_map (1, 3, Ht, Wt) tangent-space vectors (unit after normalization; (0, 0, 1) = no change),
light (3,) point-light position in camera coordinates, ambient (1,) logit of k_a shared by all frames.

Texture images are stored in image orientation: row 0 is v = 1 (v up, as in OBJ, glTF and USD).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from harp_kaolin.config import PARAM_GROUPS


class AvatarParams(torch.nn.Module):
    """Learnable avatar and per-frame pose parameters, grouped by name."""

    def __init__(
        self,
        num_frames: int,
        num_pose: int,
        num_shape: int,
        num_vertices: int,
        texture_size: int,
        albedo_init: Tensor | None = None,
        light_init: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.pose = torch.nn.Parameter(torch.zeros(num_frames, num_pose, 3))
        self.global_orient = torch.nn.Parameter(torch.zeros(num_frames, 3))
        self.transl = torch.nn.Parameter(torch.zeros(num_frames, 3))
        self.shape = torch.nn.Parameter(torch.zeros(1, num_shape))
        self.displacement = torch.nn.Parameter(torch.zeros(num_vertices))
        albedo = torch.full((1, 3, texture_size, texture_size), 0.5)
        if albedo_init is not None:
            albedo[:] = albedo_init.reshape(1, 3, 1, 1)
        self.albedo = torch.nn.Parameter(albedo)
        normal = torch.zeros(1, 3, texture_size, texture_size)
        normal[:, 2] = 1.0
        self.normal_map = torch.nn.Parameter(normal)
        self.light = torch.nn.Parameter(torch.zeros(3) if light_init is None else light_init.clone().float())
        self.ambient = torch.nn.Parameter(torch.zeros(1))

    def group(self, name: str) -> torch.nn.Parameter:
        if name not in PARAM_GROUPS:
            raise ValueError(f"unknown parameter group {name!r}; known: {', '.join(PARAM_GROUPS)}")
        return getattr(self, name)

    def albedo_image(self) -> Tensor:
        """(1, 3, Ht, Wt) albedo clamped to [0, 1]."""
        return self.albedo.clamp(0.0, 1.0)

    def normal_vectors(self) -> Tensor:
        """(1, 3, Ht, Wt) unit tangent-space normals."""
        return torch.nn.functional.normalize(self.normal_map, dim=1, eps=1e-6)

    def normal_image(self) -> Tensor:
        """(1, 3, Ht, Wt) normal map encoded as (n + 1) / 2, as stored in PNG files."""
        return (self.normal_vectors() + 1) * 0.5

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).detach().cpu().numpy() for name in PARAM_GROUPS}

    @staticmethod
    def from_numpy(arrays: dict[str, np.ndarray]) -> AvatarParams:
        p = AvatarParams(
            num_frames=arrays["pose"].shape[0],
            num_pose=arrays["pose"].shape[1],
            num_shape=arrays["shape"].shape[1],
            num_vertices=arrays["displacement"].shape[0],
            texture_size=arrays["albedo"].shape[-1],
        )
        with torch.no_grad():
            for name in PARAM_GROUPS:
                getattr(p, name).copy_(torch.as_tensor(np.asarray(arrays[name])))
        return p
