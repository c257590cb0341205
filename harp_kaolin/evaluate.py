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


def read_gt_keypoints_for(seq_path: str | Path, num_frames: int) -> Tensor | None:
    """``read_gt_keypoints``, checked to hold one entry per frame of the sequence."""
    gt = read_gt_keypoints(seq_path)
    if gt is not None and gt.shape[0] != num_frames:
        raise ValueError(
            f"{Path(seq_path) / 'gt' / 'keypoints.json'}: has {gt.shape[0]} frame entries but the sequence "
            f"has {num_frames} frames"
        )
    return gt


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


# ------------------------------------------------------------------------------------ harp evaluate
EVAL_MODES = ("auto", "train", "test")


def evaluation_mode(avatar, seq, mode: str = "auto") -> str:
    """The evaluation mode: "train" when SEQ holds the avatar's training frames (same names), else "test".

    Args:
        avatar: an ``Avatar``; seq: a loaded ``Sequence``.
        mode: "auto" (decide by the frame names), "train" (the names must match) or "test".

    Raises:
        ValueError: "train" asked for a sequence whose frame names differ from the training frames.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    same = list(seq.names) == list(avatar.names)
    if mode == "auto":
        return "train" if same else "test"
    if mode == "train" and not same:
        diff = next((i for i, (a, b) in enumerate(zip(seq.names, avatar.names)) if a != b), None)
        where = (
            f"frame {diff} is {seq.names[diff]!r} there but {avatar.names[diff]!r} in training"
            if diff is not None
            else f"{len(seq.names)} frames there, {len(avatar.names)} in training"
        )
        raise ValueError(
            f"{Path(seq.root) / 'images'}: not the training sequence of {avatar.folder / 'params.npz'} "
            f"(frame names differ: {where}); use --mode test to fit poses to a new sequence"
        )
    return mode


def write_previews(folder: Path, data, renders: Tensor, silhouettes: Tensor, video: str, fps: float) -> None:
    """input | render | overlay PNGs (one per frame, named like the frame) and an mp4 of them."""
    from harp_kaolin.fit.pipeline import preview_strip
    from harp_kaolin.io import write_png, write_video

    strips = []
    for t, name in enumerate(data.names):
        strip = preview_strip(data.images[t], renders[t], silhouettes[t])
        write_png(Path(folder) / f"{Path(name).stem}.png", strip)
        strips.append(strip)
    write_video(Path(folder) / video, strips, fps=fps)


def evaluate_avatar(
    avatar_dir: str | Path,
    seq_path: str | Path,
    out_dir: str | Path | None = None,
    mode: str = "auto",
    epochs: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """``harp evaluate``: metrics of an avatar on its training sequence or on a new one of the same hand.

    On the training sequence the frames are rendered with the fitted parameters. On a new sequence the
    frames are initialized from their keypoints (avatar shape fixed) and only their pose, global rotation
    and translation are fitted to the masks (silhouette + keypoint term, ``posefit.EVAL_WEIGHTS``), with
    shape, displacement, appearance and light frozen (HARP Sec. 4.3); ``iou_init`` is the IoU before.

    Args:
        avatar_dir: avatar folder written by ``harp fit``.
        seq_path: sequence folder.
        out_dir: output folder (default AVATAR/evaluation/SEQ_NAME): metrics.json and renders/
            (input | render | overlay PNGs and eval.mp4).
        mode: "auto" (training sequence when the frame names match), "train" or "test".
        epochs: epochs of the pose fit (default ``posefit.DEFAULT_EPOCHS``).
        device: "cpu" or "cuda".
        resume: continue an interrupted pose fit from out_dir/checkpoints.
        progress: show progress bars.

    Returns:
        the metrics dict written to metrics.json (DESIGN.md keys, plus mode, iou_init, ...).
    """
    import dataclasses
    import time

    from harp_kaolin import posefit
    from harp_kaolin.avatar import load_avatar
    from harp_kaolin.data import load_sequence
    from harp_kaolin.fit.data import prepare
    from harp_kaolin.io import atomic_write_text

    avatar = load_avatar(avatar_dir)
    seq = load_sequence(seq_path)
    mode = evaluation_mode(avatar, seq, mode)
    out_dir = Path(out_dir) if out_dir is not None else avatar.folder / "evaluation" / Path(seq_path).name
    data = prepare(seq, avatar.config.image_size)
    seconds: dict[str, float] = {}
    if mode == "train":
        _check_training_camera(avatar, data, seq_path)
        start = time.perf_counter()
        renders, silhouettes = _render_training_frames(avatar, data, device, progress)
        seconds["render"] = time.perf_counter() - start
        metrics = training_metrics(
            renders, silhouettes, data, avatar.hand, avatar.params, seq_path, _perceptual_mode(avatar)
        )
    else:
        gt = read_gt_keypoints_for(seq_path, len(data.names))
        lr = posefit.pose_lr(avatar.config)
        stage = posefit.pose_stage("pose", epochs or posefit.DEFAULT_EPOCHS, posefit.EVAL_WEIGHTS, lr)
        fit = posefit.fit_new_frames(avatar, seq, data, stage, out_dir, device, resume, progress)
        seconds.update(fit.seconds)
        renders, silhouettes = fit.renders, fit.silhouettes
        per_frame = image_metrics(renders, silhouettes, data.images, data.masks)
        per_frame["iou_init"] = M.silhouette_iou(fit.silhouettes_init, data.masks)
        per_frame.update(keypoint_metrics(fit.keypoints, gt))
        per_frame.update({f"{k}_init": v for k, v in keypoint_metrics(fit.init.keypoints, gt).items()})
        with torch.no_grad():
            per_frame.update(albedo_metrics(avatar.params.albedo_image()[0], avatar.hand, seq_path))
        per_frame["perceptual_loss"] = _perceptual_mode(avatar)
        metrics = M.summarize(per_frame)
        metrics["stage"] = dataclasses.asdict(stage)
    metrics["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    metrics["mode"] = mode
    metrics["sequence"] = str(seq_path)
    metrics["avatar"] = str(avatar_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    write_previews(out_dir / "renders", data, renders, silhouettes, "eval.mp4", avatar.config.fps)
    return metrics


def _check_training_camera(avatar, data, seq_path) -> None:
    keys = ("width", "height", "fx", "fy", "cx", "cy")
    if any(not np.isclose(float(data.camera[k]), float(avatar.camera[k]), rtol=1e-4) for k in keys):
        raise ValueError(
            f"{Path(seq_path) / 'camera.json'}: at the fitting resolution it gives {data.camera}, not the "
            f"avatar's camera {avatar.camera} ({avatar.folder / 'params.npz'}); "
            "is this the training sequence? (--mode test fits poses to a new one)"
        )


def _render_training_frames(avatar, data, device: str, progress: bool) -> tuple[Tensor, Tensor]:
    from harp_kaolin.novel import Poses, make_renderer, render_poses

    p = avatar.params.to(device)
    frames = render_poses(
        avatar.hand.to(device),
        p,
        make_renderer(avatar, data.camera, device),
        Poses(p.pose.detach(), p.global_orient.detach(), p.transl.detach()),
        batch=avatar.config.batch_frames,
        progress=progress,
    )
    avatar.hand.cpu()  # the metrics run on the CPU
    avatar.params.cpu()
    return frames.images, frames.silhouettes


def _perceptual_mode(avatar) -> str | None:
    """The perceptual term the avatar's fit used (from its metrics.json), or None when unknown."""
    path = avatar.folder / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("perceptual_loss")
