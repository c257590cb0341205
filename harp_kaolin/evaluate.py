"""Metrics of an avatar against a sequence (DESIGN.md metrics.json keys)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harp_kaolin import metrics as M


def read_gt_keypoints(seq_path: str | Path) -> Tensor | None:
    """(T, 21, 3) ground-truth keypoints from SEQ/gt/keypoints.json (NaN for null frames), or None."""
    path = Path(seq_path) / "gt" / "keypoints.json"
    if not path.is_file():
        return None
    frames = json.loads(path.read_text())["frames"]
    out = torch.full((len(frames), 21, 3), float("nan"))
    for i, f in enumerate(frames):
        if f.get("keypoints3d") is not None:
            out[i] = torch.tensor(f["keypoints3d"], dtype=torch.float32)
    return out


def gt_albedo_in_layout(seq_path: str | Path, hand, size: int) -> np.ndarray | None:
    """SEQ/gt/albedo.png (stored in the model's original UV layout) resampled into ``hand``'s layout."""
    from harp_kaolin.io import read_png
    from harp_kaolin.uvmap import resample_from_original_layout

    path = Path(seq_path) / "gt" / "albedo.png"
    if not path.is_file():
        return None
    return resample_from_original_layout(
        read_png(path), float(hand.uv_scale), hand.uv_offset.cpu().numpy(), size
    )


def image_metrics(renders: Tensor, silhouettes: Tensor, images: Tensor, masks: Tensor) -> dict:
    """Per-frame IoU, L1 (whole image on white), masked L1, MS-SSIM and LPIPS (or None with the reason).

    Args:
        renders: (T, H, W, 3) rendered images composited on white.
        silhouettes: (T, H, W) rendered soft silhouettes.
        images: (T, H, W, 3) input frames; masks: (T, H, W) input masks.
    """
    pred = renders.permute(0, 3, 1, 2).clamp(0, 1)
    gt = M.on_white(images.permute(0, 3, 1, 2), masks)
    per_frame = {
        "iou": M.silhouette_iou(silhouettes, masks),
        "l1": M.l1(pred, gt),
        "l1_masked": M.l1_masked(pred, gt, masks),
        "ms_ssim": M.ms_ssim(pred, gt),
    }
    values, note = M.lpips(pred, gt)
    per_frame["lpips"] = values
    if values is None:
        per_frame["lpips_note"] = note
    return per_frame


def keypoint_metrics(pred: Tensor, gt: Tensor | None) -> dict:
    """Keypoint and Procrustes-aligned keypoint errors (mm) over the frames with ground truth."""
    if gt is None:
        return {}
    ok = torch.isfinite(gt).all(-1).all(-1)
    if not ok.any():
        return {}
    err = torch.full((gt.shape[0],), float("nan"))
    pa = err.clone()
    err[ok] = M.keypoint_error_mm(pred[ok], gt[ok])
    pa[ok] = M.pa_keypoint_error_mm(pred[ok], gt[ok])
    return {"keypoint_error_mm": err, "pa_keypoint_error_mm": pa}


def albedo_metrics(albedo: Tensor, hand, seq_path) -> dict:
    """Albedo PSNR over the used UV region, when SEQ/gt/albedo.png exists. ``albedo``: (3, H, W)."""
    from harp_kaolin.uvmap import uv_coverage

    size = albedo.shape[-1]
    gt = gt_albedo_in_layout(seq_path, hand, size)
    if gt is None:
        return {}
    cover = torch.from_numpy(uv_coverage(hand.uvs, hand.face_uvs, size)).float()
    return {"albedo_psnr": M.albedo_psnr(albedo.cpu().float(), torch.from_numpy(gt).permute(2, 0, 1), cover)}


def training_metrics(renders, silhouettes, data, hand, params, seq_path, perceptual_mode: str) -> dict:
    """metrics.json of a fit: image metrics on the training frames, keypoints and albedo against gt/."""
    per_frame = image_metrics(renders, silhouettes, data.images, data.masks)
    with torch.no_grad():
        kp = hand.keypoints(params.pose, params.shape, params.global_orient, params.transl).cpu()
        per_frame.update(keypoint_metrics(kp, read_gt_keypoints(seq_path)))
        per_frame.update(albedo_metrics(params.albedo_image()[0], hand, seq_path))
    per_frame["perceptual_loss"] = perceptual_mode
    return M.summarize(per_frame)
