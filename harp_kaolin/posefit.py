"""Pose-only fitting of a known avatar to a new sequence of the same person (HARP Sec. 4.3).

Everything but the per-frame pose, global rotation and translation (shape, displacement, albedo, normal
map, light, ambient) is copied from the avatar and frozen; the frames are initialized from their
keypoints with the avatar's shape fixed. The optimization is the project's ``Fitter`` with one
``StageConfig`` whose learning rates name only the pose groups, so there is no second loop:

- ``EVAL_WEIGHTS`` (``harp evaluate`` on a new sequence): silhouette + the keypoint term, i.e.
  "pose-only fitting to the test frames' masks with everything else frozen";
- ``REFINE_WEIGHTS`` (``harp refine-pose``, "HARP-known"): silhouette, photometric and perceptual
  losses against the frozen appearance, plus the keypoint term. Without it (or with weight 1) the
  hand drifts in depth, which a monocular image constrains weakly: on 64 px synthetic tests the
  image terms improved the articulation (PA error) but the absolute keypoint error grew by up to 35 %.

Weights are those of Table C.1.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harp_kaolin.config import PARAM_GROUPS, StageConfig
from harp_kaolin.data import Sequence
from harp_kaolin.fit.init import InitResult, initialize, project
from harp_kaolin.fit.params import AvatarParams

POSE_GROUPS = ("pose", "global_orient", "transl")
FROZEN_GROUPS = tuple(g for g in PARAM_GROUPS if g not in POSE_GROUPS)
DEFAULT_LR = {"pose": 1e-3, "global_orient": 1e-3, "transl": 1e-3}  # the paper's geometry rate
EVAL_WEIGHTS = {"silhouette": 7.0, "keypoints": 10.0}  # Table C.1 weights of the two terms
REFINE_WEIGHTS = {"silhouette": 7.0, "keypoints": 10.0, "photometric": 1.0, "perceptual": 1.0}
DEFAULT_EPOCHS = 50


def pose_lr(cfg) -> dict[str, float]:
    """Learning rates of the pose groups: those of the avatar's first stage that optimizes them."""
    for stage in cfg.stages:
        found = {g: stage.lr[g] for g in POSE_GROUPS if stage.lr.get(g, 0) > 0}
        if found:
            return {g: found.get(g, DEFAULT_LR[g]) for g in POSE_GROUPS}
    return dict(DEFAULT_LR)


def pose_stage(name: str, epochs: int, weights: dict[str, float], lr: dict[str, float]) -> StageConfig:
    """A stage that optimizes only per-frame pose, global rotation and translation.

    Raises:
        ValueError: when ``lr`` names another parameter group.
    """
    other = sorted(set(lr) - set(POSE_GROUPS))
    if other:
        raise ValueError(f"a pose-only stage optimizes only {', '.join(POSE_GROUPS)}; got lr for {other}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return StageConfig(name=name, epochs=epochs, lr=dict(lr), weights=dict(weights))


def initialize_frames(avatar, data: Sequence) -> InitResult:
    """Per-frame pose from the sequence's keypoints, with the avatar's shape fixed (avatar on the CPU)."""
    shape = avatar.params.shape.detach()
    return initialize(avatar.hand, data.keypoints3d, data.keypoints2d, data.camera, avatar.config.init, shape)


def frozen_params(avatar_params: AvatarParams, init: InitResult) -> AvatarParams:
    """AvatarParams for the new frames: poses from ``init``, the rest copied from the avatar and frozen.

    Args:
        avatar_params: the fitted avatar's parameters (any number of training frames).
        init: initialization of the T new frames.

    Returns:
        AvatarParams with T frames on the CPU; the groups in ``FROZEN_GROUPS`` have requires_grad False.
    """
    a = avatar_params
    p = AvatarParams(
        init.pose.shape[0], a.pose.shape[1], a.shape.shape[1], a.displacement.shape[0], a.albedo.shape[-1]
    )
    with torch.no_grad():
        for name in FROZEN_GROUPS:
            p.group(name).copy_(a.group(name).detach().cpu())
            p.group(name).requires_grad_(False)
        p.pose.copy_(init.pose)
        p.global_orient.copy_(init.global_orient)
        p.transl.copy_(init.transl)
    return p


def pose_fitter(avatar, data: Sequence, init: InitResult, stage: StageConfig, out_dir, device: str = "cpu"):
    """A ``Fitter`` that runs ``stage`` (pose groups only) on the new frames with the avatar frozen.

    Args:
        avatar: an ``Avatar`` (``harp_kaolin.avatar.load_avatar``).
        data: the new frames at the avatar's fitting resolution (``prepare(seq, cfg.image_size)``).
        init: their initialization (``initialize_frames``).
        stage: a ``pose_stage``.
        out_dir: where the fitter keeps its checkpoint (``out_dir/checkpoints``).
        device: "cpu" or "cuda".
    """
    from harp_kaolin.fit.trainer import Fitter

    cfg = dataclasses.replace(avatar.config, stages=[stage], device=device)
    return Fitter(avatar.hand.to(device), data, cfg, init, out_dir, params=frozen_params(avatar.params, init))


@dataclass(frozen=True)
class PoseFit:
    """A finished pose-only fit.

    Attributes:
        fitter: the ``Fitter`` (its params hold the fitted poses and the frozen avatar).
        init: the keypoint initialization.
        silhouettes_init: (T, H, W) rendered silhouettes before the fit.
        renders, silhouettes: (T, H, W, 3), (T, H, W) after the fit, CPU.
        keypoints: (T, 21, 3) keypoints of the fitted poses, camera coordinates, CPU.
        seconds: {"init": ..., stage name: ...}.
    """

    fitter: object
    init: InitResult
    silhouettes_init: Tensor
    renders: Tensor
    silhouettes: Tensor
    keypoints: Tensor
    seconds: dict


def fit_new_frames(
    avatar, seq, data: Sequence, stage: StageConfig, out_dir, device: str, resume: bool, progress: bool
) -> PoseFit:
    """Initialize the frames of ``seq`` from its keypoints and run the pose-only ``stage`` on them.

    The avatar's hand is back on the CPU afterwards; the fitter's parameters stay on ``device``.

    Raises:
        ValueError: naming SEQ/keypoints.json when the sequence has no keypoints to start from.
    """
    from harp_kaolin.fit.init import NO_KEYPOINTS_HELP
    from harp_kaolin.fit.pipeline import render_all

    if data.keypoints3d is None and data.keypoints2d is None:
        raise ValueError(f"{Path(seq.root) / 'keypoints.json'}: missing or empty; {NO_KEYPOINTS_HELP}")
    start = time.perf_counter()
    init = initialize_frames(avatar, data)
    seconds = {"init": time.perf_counter() - start}
    fitter = pose_fitter(avatar, data, init, stage, out_dir, device)
    _, silhouettes_init = render_all(fitter)
    seconds.update(fitter.run(resume=resume, progress=progress).seconds)
    renders, silhouettes = render_all(fitter)
    keypoints = fitted_keypoints(fitter)
    avatar.hand.cpu()  # the avatar's metrics (e.g. UV coverage) are computed on the CPU
    return PoseFit(fitter, init, silhouettes_init, renders, silhouettes, keypoints, seconds)


def fitted_keypoints(fitter) -> Tensor:
    """(T, 21, 3) keypoints of the fitter's current parameters, camera coordinates, on the CPU."""
    p = fitter.params
    with torch.no_grad():
        return fitter.hand.keypoints(p.pose, p.shape, p.global_orient, p.transl).cpu()


def keypoints_document(keypoints3d: Tensor, camera: dict) -> dict:
    """The sequence keypoints.json structure for (T, 21, 3) keypoints; 2D projected with ``camera``."""
    uv = project(keypoints3d, camera)
    k2 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
    frames = [
        {"keypoints3d": k3.tolist(), "keypoints2d": k.tolist()}
        for k3, k in zip(keypoints3d.double(), k2.double())
    ]
    return {"order": "harp21", "frames": frames}


def refine_poses(
    avatar_dir: str | Path,
    seq_path: str | Path,
    out_dir: str | Path,
    epochs: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """``harp refine-pose``: pose-only fit with photometric losses against the frozen avatar.

    Writes ``out_dir/keypoints.json`` (the sequence schema, 2D at the sequence's resolution),
    ``out_dir/poses.npz`` (pose, global_orient, transl, model: accepted by ``harp render --poses``),
    ``out_dir/metrics.json`` and ``out_dir/renders/`` (input | render | overlay PNGs and refine.mp4).

    Returns:
        the metrics dict: keypoint errors (mm) of the input keypoints, the initialization and the
        refined poses against SEQ/gt/keypoints.json when it exists, and IoU before and after.
    """
    from harp_kaolin import metrics as M
    from harp_kaolin.avatar import load_avatar
    from harp_kaolin.data import load_sequence
    from harp_kaolin.evaluate import image_metrics, keypoint_metrics, read_gt_keypoints_for, write_previews
    from harp_kaolin.fit.data import prepare
    from harp_kaolin.io import atomic_savez, atomic_write_text

    out_dir = Path(out_dir)
    avatar = load_avatar(avatar_dir)  # initialization runs on the CPU; the fitter moves to device
    seq = load_sequence(seq_path)
    data = prepare(seq, avatar.config.image_size)
    gt = read_gt_keypoints_for(seq_path, len(seq.names))
    stage = pose_stage("refine-pose", epochs or DEFAULT_EPOCHS, REFINE_WEIGHTS, pose_lr(avatar.config))
    fit = fit_new_frames(avatar, seq, data, stage, out_dir, device, resume, progress)
    refined = fit.keypoints

    per_frame = image_metrics(fit.renders, fit.silhouettes, data.images, data.masks)
    per_frame["iou_init"] = M.silhouette_iou(fit.silhouettes_init, data.masks)
    per_frame.update(keypoint_metrics(refined, gt))
    per_frame.update(_suffixed(keypoint_metrics(fit.init.keypoints, gt), "_init"))
    if seq.keypoints3d is not None:
        per_frame.update(_suffixed(keypoint_metrics(seq.keypoints3d, gt), "_input"))
    per_frame["perceptual_loss"] = fit.fitter.perceptual_mode
    per_frame["seconds"] = {k: round(v, 2) for k, v in fit.seconds.items()}
    metrics = M.summarize(per_frame)
    metrics["sequence"] = str(seq_path)
    metrics["stage"] = dataclasses.asdict(stage)

    doc = keypoints_document(refined, seq.camera)
    atomic_write_text(out_dir / "keypoints.json", json.dumps(doc))
    p = fit.fitter.params.to_numpy()
    atomic_savez(
        out_dir / "poses.npz",
        pose=p["pose"],
        global_orient=p["global_orient"],
        transl=p["transl"],
        model=np.array(avatar.config.hand),
        names=np.array(data.names),
    )
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    write_previews(out_dir / "renders", data, fit.renders, fit.silhouettes, "refine.mp4", avatar.config.fps)
    return metrics


def _suffixed(values: dict, suffix: str) -> dict:
    return {k + suffix: v for k, v in values.items()}
