"""Sequence -> tensors at the fitting resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from harp_kaolin.data import Sequence


@dataclass(frozen=True)
class FitData:
    """Frames at the fitting resolution.

    Attributes:
        names: T frame names.
        images: (T, H, W, 3) float in [0, 1].
        masks: (T, H, W) float {0, 1}.
        camera: dict width, height, fx, fy, cx, cy at this resolution.
        keypoints3d, keypoints2d: (T, 21, 3) or None (2D scaled to this resolution).
    """

    names: list[str]
    images: Tensor
    masks: Tensor
    camera: dict
    keypoints3d: Tensor | None
    keypoints2d: Tensor | None


def scale_camera(camera: dict, width: int, height: int) -> dict:
    """Intrinsics for the image resized to width x height (pixel centres stay at +0.5)."""
    sx, sy = width / camera["width"], height / camera["height"]
    return {
        "width": width,
        "height": height,
        "fx": camera["fx"] * sx,
        "fy": camera["fy"] * sy,
        "cx": camera["cx"] * sx,
        "cy": camera["cy"] * sy,
    }


def fit_size(camera: dict, longest: int) -> tuple[int, int]:
    """(width, height) with the longest side ``longest`` (never upscaled)."""
    w, h = camera["width"], camera["height"]
    s = min(1.0, longest / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def prepare(seq: Sequence, image_size: int) -> FitData:
    import cv2

    w, h = fit_size(seq.camera, image_size)
    if (w, h) == (seq.camera["width"], seq.camera["height"]):
        images, masks = seq.images, seq.masks
    else:
        images = torch.from_numpy(
            np.stack([cv2.resize(im.numpy(), (w, h), interpolation=cv2.INTER_AREA) for im in seq.images])
        )
        masks = torch.from_numpy(
            np.stack([cv2.resize(m.numpy(), (w, h), interpolation=cv2.INTER_AREA) for m in seq.masks])
        )
        masks = (masks > 0.5).float()
    cam = scale_camera(seq.camera, w, h)
    k2 = seq.keypoints2d
    if k2 is not None:
        k2 = k2.clone()
        k2[..., 0] *= w / seq.camera["width"]
        k2[..., 1] *= h / seq.camera["height"]
    return FitData(list(seq.names), images.float(), masks.float(), cam, seq.keypoints3d, k2)
