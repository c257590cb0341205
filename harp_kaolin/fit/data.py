"""Sequence -> the same sequence at the fitting resolution."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from harp_kaolin.data import Sequence


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


def prepare(seq: Sequence, image_size: int) -> Sequence:
    """The sequence with frames, masks, camera and 2D keypoints rescaled to ``image_size`` (longest side)."""
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
    return dataclasses.replace(seq, images=images.float(), masks=masks.float(), camera=cam, keypoints2d=k2)
