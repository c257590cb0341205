"""Image, keypoint and texture metrics on cases with known values; the metrics.json summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as lib_ms_ssim
from pytorch_msssim import ssim as lib_ssim

from harp_kaolin import metrics as M

ATOL = 1e-6  # exact-by-construction values in float32
MSSSIM_ATOL = 1e-6  # our small-image MS-SSIM loop vs pytorch_msssim, float64
KP_ATOL_MM = 1e-6  # keypoint errors in float64, millimeters
PSNR_ATOL_DB = 1e-4


def _image(b: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g, dtype=dtype)


def _rotation(axis, angle: float) -> torch.Tensor:
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _keypoints(b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(b, 21, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.0, 0.5])


# ------------------------------------------------------------------------------------------- silhouettes
def test_iou_identical_and_empty_masks():
    m = torch.zeros(2, 8, 8)
    m[0, 2:6, 2:6] = 1.0
    torch.testing.assert_close(M.silhouette_iou(m, m), torch.ones(2))  # frame 1: both empty -> 1


def test_iou_half_flipped_mask():
    gt = torch.zeros(2, 8, 8)
    gt[:, 2:6, 2:6] = 1.0  # 16 foreground pixels
    pred = gt.clone()
    pred[0, 2:4, 2:6] = 0.0  # half the foreground off: 8 / 16
    pred[1, 0, :] = 1.0  # 8 background pixels on: 16 / 24
    torch.testing.assert_close(M.silhouette_iou(pred, gt), torch.tensor([0.5, 2 / 3]))


def test_iou_threshold_is_half():
    gt = torch.ones(1, 2, 2)
    pred = torch.tensor([[[0.5, 0.49], [1.0, 0.0]]])  # 0.5 counts, 0.49 does not
    assert M.silhouette_iou(pred, gt).item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------- L1
def test_l1_identical_and_constant_offset():
    gt = 0.2 + 0.5 * _image(2, 16)
    c = 0.125
    assert M.l1(gt, gt).abs().max().item() == 0.0
    torch.testing.assert_close(M.l1(gt + c, gt), torch.full((2,), c), atol=ATOL, rtol=0)


def test_l1_masked_counts_only_pixels_inside_the_gt_mask():
    gt = 0.5 * torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :, :2] = 1.0  # left half
    pred = gt.clone()
    pred[..., 2:] = 0.0  # errors outside the mask are ignored
    assert M.l1_masked(pred, gt, mask).item() == 0.0
    pred[0, 0, 0, 0] = 0.9  # one channel of one pixel inside: 0.4 over 8 pixels x 3 channels
    assert M.l1_masked(pred, gt, mask).item() == pytest.approx(0.4 / 24, abs=ATOL)
    assert math.isnan(M.l1_masked(pred, gt, torch.zeros(1, 4, 4)).item())


def test_on_white_composites_background_to_one():
    img = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    out = M.on_white(img, mask)
    torch.testing.assert_close(out[0, :, 0, 0], torch.zeros(3))
    torch.testing.assert_close(out[0, :, 0, 1], torch.ones(3))
    torch.testing.assert_close(out[0, :, 1, 0], torch.full((3,), 0.5))


def test_channels_last_images_are_refused():
    x = torch.rand(1, 16, 16, 3)
    with pytest.raises(ValueError, match="pred must be"):
        M.l1(x, x)


# ------------------------------------------------------------------------------------------- MS-SSIM
@pytest.mark.parametrize("size,levels", [(16, 1), (32, 2), (48, 3), (100, 4), (170, 5)])
def test_ms_ssim_identical_is_one_at_every_size(size, levels):
    x = _image(2, size)
    assert M.ms_ssim_levels(size) == levels
    torch.testing.assert_close(M.ms_ssim(x, x), torch.ones(2), atol=ATOL, rtol=0)


@pytest.mark.parametrize("levels", [2, 3, 4, 5])
def test_small_image_loop_matches_pytorch_msssim(levels):
    x = _image(2, 176, dtype=torch.float64)
    y = (x + 0.1 * _image(2, 176, seed=1, dtype=torch.float64)).clamp(0, 1)
    w = np.array(M.MS_SSIM_WEIGHTS[:levels])
    weights = (w / w.sum()).tolist()
    ref = lib_ms_ssim(x, y, data_range=1.0, size_average=False, weights=weights)
    torch.testing.assert_close(M._ms_ssim_small(x, y, weights), ref, atol=MSSSIM_ATOL, rtol=0)
    torch.testing.assert_close(M.ms_ssim(x, y, levels=levels), ref, atol=MSSSIM_ATOL, rtol=0)


def test_single_scale_is_pytorch_msssim_ssim():
    x = _image(1, 18, dtype=torch.float64)
    y = (x + 0.05).clamp(0, 1)
    ref = lib_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(M.ms_ssim(x, y), ref, atol=MSSSIM_ATOL, rtol=0)


def test_ms_ssim_size_limits():
    x = _image(1, 10)
    with pytest.raises(ValueError, match="more than 10 px"):
        M.ms_ssim(x, x)
    with pytest.raises(ValueError, match="levels must be in 1..3"):
        M.ms_ssim(_image(1, 48), _image(1, 48), levels=4)


def test_ms_ssim_perturbed_is_below_one_and_differentiable():
    gt = _image(1, 64)
    pred = (gt + 0.1 * _image(1, 64, seed=2)).clamp(0, 1).requires_grad_(True)
    v = M.ms_ssim(pred, gt)
    assert 0.0 < v.item() < 1.0
    v.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- LPIPS
def test_lpips_is_none_with_a_reason_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    x = _image(1, 64)
    value, note = M.lpips(x, x)
    assert value is None
    assert "alexnet-owt-7be5be79.pth" in note and str(tmp_path) in note


# ------------------------------------------------------------------------------------------- keypoints
def test_keypoint_errors_identical_are_zero():
    k = _keypoints()
    assert M.keypoint_error_mm(k, k).abs().max().item() == 0.0
    assert M.pa_keypoint_error_mm(k, k).abs().max().item() < KP_ATOL_MM


def test_translation_gives_its_length_in_mm_and_zero_after_alignment():
    gt = _keypoints()
    pred = gt + torch.tensor([0.003, 0.004, 0.0], dtype=torch.float64)  # 5 mm for every keypoint
    torch.testing.assert_close(M.keypoint_error_mm(pred, gt), torch.full((2,), 5.0, dtype=torch.float64))
    assert M.pa_keypoint_error_mm(pred, gt).abs().max().item() < KP_ATOL_MM


def test_similarity_is_removed_by_procrustes():
    gt = _keypoints()
    s, r, t = 1.3, _rotation([0.2, 1.0, -0.4], 0.7), torch.tensor([0.01, -0.02, 0.05], dtype=torch.float64)
    pred = s * gt @ r.T + t
    plain = np.linalg.norm((pred - gt).numpy(), axis=-1).mean(-1) * 1000.0  # by hand, numpy
    torch.testing.assert_close(M.keypoint_error_mm(pred, gt), torch.from_numpy(plain))
    assert plain.min() > 10.0
    assert M.pa_keypoint_error_mm(pred, gt).abs().max().item() < KP_ATOL_MM
    torch.testing.assert_close(M.procrustes_align(pred, gt), gt, atol=1e-12, rtol=0)


def test_procrustes_is_least_squares_optimal_with_noise():
    gt = _keypoints(seed=3)
    s, r, t = 0.8, _rotation([1.0, 0.0, 1.0], -1.1), torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    noise = 0.002 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pred = s * gt @ r.T + t + noise
    undone = ((pred - t) @ r) / s  # the true inverse, one candidate similarity
    sse_pa = (M.procrustes_align(pred, gt) - gt).square().sum(dim=(1, 2))
    sse_true = (undone - gt).square().sum(dim=(1, 2))
    assert (sse_pa <= sse_true + 1e-15).all()


def test_procrustes_does_not_use_reflections():
    gt = _keypoints()
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert M.pa_keypoint_error_mm(mirrored, gt).min().item() > 1.0


# ------------------------------------------------------------------------------------------- albedo
def test_albedo_psnr_known_mse_and_cap():
    gt = 0.5 * torch.ones(3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1.0
    pred = gt.clone()
    pred[:, :4] += 0.1  # MSE 0.01 inside the used region -> 20 dB
    pred[:, 4:] = 1.0  # the unused region does not count
    assert M.albedo_psnr(pred, gt, mask).item() == pytest.approx(20.0, abs=PSNR_ATOL_DB)
    assert M.albedo_psnr(gt, gt, mask).item() == M.PSNR_CAP_DB
    with pytest.raises(ValueError, match="uv_mask selects no texel"):
        M.albedo_psnr(pred, gt, torch.zeros(8, 8))


# ------------------------------------------------------------------------------------------- summary
def test_summarize_means_lists_and_passthrough():
    out = M.summarize(
        {
            "perceptual_loss": "ms-ssim",
            "iou": torch.tensor([1.0, 0.5]),
            "l1_masked": torch.tensor([0.25, float("nan")]),
            "lpips": None,
            "lpips_note": "weights missing",
            "albedo_psnr": torch.tensor(31.5),
            "keypoint_error_mm": [2.0, None, 4.0],
            "seconds": {"geometry": 1.5},
        }
    )
    assert out["iou"] == pytest.approx(0.75) and out["iou_per_frame"] == [1.0, 0.5]
    assert out["l1_masked"] == pytest.approx(0.25) and out["l1_masked_per_frame"] == [0.25, None]
    assert out["keypoint_error_mm"] == pytest.approx(3.0)
    assert out["lpips"] is None and out["lpips_note"] == "weights missing"
    assert out["albedo_psnr"] == pytest.approx(31.5)
    assert out["perceptual_loss"] == "ms-ssim" and out["seconds"] == {"geometry": 1.5}
    assert list(out)[:2] == ["iou", "iou_per_frame"]
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN or inf anywhere
