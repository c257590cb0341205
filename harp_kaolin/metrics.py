"""Evaluation metrics as pure functions on torch tensors, and the metrics.json summary.

Conventions: images are (B, 3, H, W) float in [0, 1] (channels first, as pytorch_msssim and LPIPS; data
held as (B, H, W, 3) goes through ``.permute(0, 3, 1, 2)``); masks are (B, H, W) in [0, 1]; keypoints are
(B, J, 3) in meters. Per-frame functions return (B,) tensors; ``summarize`` turns them into metrics.json.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from harp_kaolin.perceptual import LPIPS

MASK_THRESHOLD = 0.5  # a pixel is foreground when its mask value is >= this (as HARP's evaluation)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # pytorch_msssim's / Wang et al.'s 5 scales
SSIM_WIN = 11  # Gaussian window size (sigma 1.5)
SSIM_SIGMA = 1.5
PSNR_CAP_DB = 100.0  # identical textures: MSE 0 would give inf, which JSON cannot hold

METRIC_KEYS = (
    "iou",
    "l1",
    "l1_masked",
    "ms_ssim",
    "lpips",
    "keypoint_error_mm",
    "pa_keypoint_error_mm",
    "albedo_psnr",
)


# ---------------------------------------------------------------------------------------------- images
def silhouette_iou(pred_mask: Tensor, gt_mask: Tensor) -> Tensor:
    """Intersection over union of masks thresholded at ``MASK_THRESHOLD``.

    Args:
        pred_mask, gt_mask: (B, H, W) in [0, 1].

    Returns:
        (B,) IoU; 1 for a frame where both masks are empty.
    """
    if pred_mask.ndim != 3:
        raise ValueError(f"pred_mask must be (B, H, W), got {tuple(pred_mask.shape)}")
    _check_mask(gt_mask, "gt_mask", tuple(pred_mask.shape))
    p, g = pred_mask >= MASK_THRESHOLD, gt_mask >= MASK_THRESHOLD
    inter = (p & g).sum(dim=(1, 2)).double()
    union = (p | g).sum(dim=(1, 2)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).float()


def on_white(image: Tensor, mask: Tensor) -> Tensor:
    """Composite (B, 3, H, W) over a white background with its (B, H, W) mask (alpha)."""
    m = mask[:, None].to(image.dtype)
    return image * m + (1.0 - m)


def l1(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean absolute difference over all pixels and channels (images composited on white first).

    Args:
        pred, gt: (B, 3, H, W) in [0, 1].

    Returns:
        (B,) mean L1.
    """
    check_image_pair(pred, gt)
    return (pred - gt).abs().mean(dim=(1, 2, 3))


def l1_masked(pred: Tensor, gt: Tensor, gt_mask: Tensor) -> Tensor:
    """Mean absolute difference over the pixels inside the ground-truth mask (and the 3 channels).

    Args:
        pred, gt: (B, 3, H, W) in [0, 1].
        gt_mask: (B, H, W); pixels >= ``MASK_THRESHOLD`` count.

    Returns:
        (B,) masked L1; NaN for a frame with an empty mask (``summarize`` leaves it out of the mean).
    """
    check_image_pair(pred, gt)
    _check_mask(gt_mask, "gt_mask", (pred.shape[0], *pred.shape[2:]))
    m = (gt_mask >= MASK_THRESHOLD)[:, None].to(pred.dtype)
    count = m.sum(dim=(1, 2, 3)) * pred.shape[1]
    total = ((pred - gt).abs() * m).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def ms_ssim_levels(size: int) -> int:
    """Number of MS-SSIM scales an image whose smaller side is ``size`` px allows (0: too small).

    Each scale halves the image and the 11 px window must fit in the smallest one: 5 scales need more
    than 160 px (pytorch_msssim's own limit), 4 more than 80, 3 more than 40, 2 more than 20, 1 (SSIM)
    more than 10.
    """
    return max((n for n in range(1, 6) if size > (SSIM_WIN - 1) * 2 ** (n - 1)), default=0)


def ms_ssim(pred: Tensor, gt: Tensor, levels: int | None = None) -> Tensor:
    """MS-SSIM (pytorch_msssim, data range 1), with fewer scales on small images.

    Images whose smaller side is <= 160 px cannot take the standard 5 scales; they use the first
    ``levels`` of the standard scale weights renormalized to sum to 1 (single-scale SSIM for 11-20 px).
    Values are then comparable only between images of the same size.

    Args:
        pred, gt: (B, 3, H, W) in [0, 1].
        levels: number of scales; default the most the size allows (``ms_ssim_levels``), up to 5.

    Returns:
        (B,) MS-SSIM, 1 for identical images.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim
    from pytorch_msssim import ssim as _ssim

    check_image_pair(pred, gt)
    side = min(pred.shape[-2:])
    most = ms_ssim_levels(side)
    levels = most if levels is None else levels
    if most == 0:
        raise ValueError(
            f"pred: MS-SSIM needs images of more than {SSIM_WIN - 1} px, got {tuple(pred.shape)}"
        )
    if not 1 <= levels <= most:
        raise ValueError(f"levels must be in 1..{most} for images of {side} px, got {levels}")
    if levels == 1:
        return _ssim(pred, gt, data_range=1.0, size_average=False, win_size=SSIM_WIN, win_sigma=SSIM_SIGMA)
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float64)
    weights = (w / w.sum()).tolist()
    if side > (SSIM_WIN - 1) * 16:
        return _ms_ssim(pred, gt, data_range=1.0, size_average=False, weights=weights, win_size=SSIM_WIN)
    return _ms_ssim_small(pred, gt, weights)


def _ms_ssim_small(x: Tensor, y: Tensor, weights: Sequence[float]) -> Tensor:
    """pytorch_msssim's MS-SSIM loop without its fixed 161 px limit: (B, C, H, W) x2 -> (B,)."""
    mcs = []
    for i in range(len(weights)):
        ssim_c, cs_c = _ssim_cs(x, y)
        if i < len(weights) - 1:
            mcs.append(torch.relu(cs_c))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stack = torch.stack([*mcs, torch.relu(ssim_c)], dim=0)  # (levels, B, C)
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.prod(stack**w, dim=0).mean(dim=1)


def _ssim_cs(x: Tensor, y: Tensor, data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-channel SSIM and contrast-structure term (B, C) with an 11 px Gaussian window, valid padding."""
    coords = torch.arange(SSIM_WIN, dtype=x.dtype, device=x.device) - SSIM_WIN // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    c = x.shape[1]

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim_map.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def lpips(
    pred: Tensor,
    gt: Tensor,
    model: LPIPS | None = None,
    weights_path: str | os.PathLike | None = None,
) -> tuple[Tensor | None, str]:
    """LPIPS v0.1 (AlexNet), as HARP's evaluation, when the backbone weights are available.

    Images are mapped to lpips' documented [-1, 1] input range (HARP's released evaluation script passed
    [0, 1] images without lpips' ``normalize`` flag, so its numbers are not directly comparable).

    Args:
        pred, gt: (B, 3, H, W) in [0, 1] (mapped to lpips' [-1, 1] range here).
        model: a ``harp_kaolin.perceptual.LPIPS`` to reuse; else one is loaded (``load_lpips``).
        weights_path: torchvision's ``alexnet-owt-7be5be79.pth`` or its folder, when ``model`` is None.

    Returns:
        ((B,) distances or None, note): the note says why LPIPS is unavailable (metrics.json's
        ``lpips_note``), or where its weights came from.
    """
    from harp_kaolin.perceptual import load_lpips

    check_image_pair(pred, gt)
    note = "given model"
    if model is None:
        model, note = load_lpips(weights_path)
        if model is None:
            return None, note
    with torch.no_grad():
        return model(pred, gt, normalize=True), note


# ---------------------------------------------------------------------------------------------- keypoints
def keypoint_error_mm(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean Euclidean keypoint error in millimeters.

    Args:
        pred, gt: (B, J, 3) in meters.

    Returns:
        (B,) mean over joints, mm.
    """
    _check_keypoints(pred, gt)
    return torch.linalg.norm(pred - gt, dim=-1).mean(dim=-1) * 1000.0


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """Similarity transform (scale, proper rotation, translation) of ``pred`` best fitting ``gt``.

    Umeyama's least-squares solution with the reflection excluded (det R = +1), as the hand-pose
    PA-MPJPE; computed in float64.

    Args:
        pred, gt: (B, J, 3), J >= 3.

    Returns:
        (B, J, 3) aligned ``pred``, dtype of ``pred``.
    """
    _check_keypoints(pred, gt)
    p, g = pred.double(), gt.double()
    mu_p, mu_g = p.mean(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)
    p0, g0 = p - mu_p, g - mu_g
    u, s, vh = torch.linalg.svd(p0.transpose(1, 2) @ g0)  # (B, 3, 3): sum_j p_j g_j^T
    d = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones_like(s)
    diag[:, -1] = d
    rot = vh.transpose(1, 2) @ torch.diag_embed(diag) @ u.transpose(1, 2)  # maps p0 onto g0
    scale = (s * diag).sum(-1) / p0.square().sum(dim=(1, 2)).clamp_min(1e-30)
    aligned = scale[:, None, None] * p0 @ rot.transpose(1, 2) + mu_g
    return aligned.to(pred.dtype)


def pa_keypoint_error_mm(pred: Tensor, gt: Tensor) -> Tensor:
    """Procrustes-aligned mean keypoint error (PA-MPJPE) in mm; pred, gt (B, J, 3) meters -> (B,)."""
    return keypoint_error_mm(procrustes_align(pred, gt), gt)


# ---------------------------------------------------------------------------------------------- textures
def albedo_psnr(pred: Tensor, gt: Tensor, uv_mask: Tensor) -> Tensor:
    """PSNR (dB, peak 1) of an albedo map over the used UV region only.

    Both maps must be in the same UV layout (ground-truth albedos are stored in the hand model's original
    layout: resample first, see ``harp_kaolin.uvmap``).

    Args:
        pred, gt: (3, H, W) in [0, 1].
        uv_mask: (H, W), texels >= ``MASK_THRESHOLD`` are used.

    Returns:
        scalar PSNR, capped at ``PSNR_CAP_DB`` (identical maps).
    """
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must be (C, H, W) of one shape, got {tuple(pred.shape)}, {tuple(gt.shape)}"
        )
    if uv_mask.shape != pred.shape[1:]:
        raise ValueError(f"uv_mask must be {tuple(pred.shape[1:])}, got {tuple(uv_mask.shape)}")
    m = (uv_mask >= MASK_THRESHOLD).to(pred.dtype)
    count = m.sum() * pred.shape[0]
    if count == 0:
        raise ValueError("uv_mask selects no texel")
    mse = ((pred - gt).square() * m).sum() / count
    return (10.0 * torch.log10(1.0 / mse)).clamp(max=PSNR_CAP_DB)


# ---------------------------------------------------------------------------------------------- summary
def summarize(per_frame: dict) -> dict:
    """The metrics.json structure (DESIGN.md) from per-frame values.

    Args:
        per_frame: metric name -> per-frame values ((T,) tensor, array or list, None entries allowed),
            a single number (e.g. ``albedo_psnr``), None (metric unavailable, e.g. ``lpips``), or anything
            else JSON-ready (``lpips_note``, ``perceptual_loss``, ``seconds``), copied as is.

    Returns:
        for per-frame metrics, ``key``: mean over the frames with a finite value (None when there is none)
        and ``key + "_per_frame"``: the values as floats (None for missing or non-finite ones); single
        numbers as float (None when non-finite); the rest unchanged. ``METRIC_KEYS`` come first.
    """
    out: dict = {}
    for key in sorted(
        per_frame, key=lambda k: METRIC_KEYS.index(k) if k in METRIC_KEYS else len(METRIC_KEYS)
    ):
        value = per_frame[key]
        if isinstance(value, (Tensor, np.ndarray)):
            value = value.tolist()  # a 0-d one becomes a number
        if isinstance(value, (list, tuple)):
            frames = [_finite_or_none(v) for v in value]
            finite = [v for v in frames if v is not None]
            out[key] = sum(finite) / len(finite) if finite else None
            out[f"{key}_per_frame"] = frames
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = _finite_or_none(value)
        else:
            out[key] = value
    return out


def _finite_or_none(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------- checks
def check_image_pair(a: Tensor, b: Tensor, names: tuple[str, str] = ("pred", "gt")) -> None:
    """Check two (B, 3, H, W) images of one shape; errors use the callers' argument ``names``."""
    na, nb = names
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(
            f"{na} must be (B, 3, H, W), got {tuple(a.shape)} (channels-last? use permute(0, 3, 1, 2))"
        )
    if b.shape != a.shape:
        raise ValueError(f"{nb} must have the shape of {na} {tuple(a.shape)}, got {tuple(b.shape)}")


def _check_mask(mask: Tensor, name: str, shape: tuple[int, ...]) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be (B, H, W) = {tuple(shape)}, got {tuple(mask.shape)}")


def _check_keypoints(pred: Tensor, gt: Tensor) -> None:
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred must be (B, J, 3), got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt must have the shape of pred {tuple(pred.shape)}, got {tuple(gt.shape)}")
