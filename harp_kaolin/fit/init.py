"""Initialization: fit the hand model's pose, shape, global rotation and translation to keypoints.

Per frame, a rigid start comes from the palm keypoints (Umeyama on keypoints3d, PnP on keypoints2d);
then all frames are refined together by Adam on the 3D L2 and/or the confidence-weighted reprojection
error, with a shared shape, small priors and optional temporal smoothing. Frames whose mean residual
stays above ``restart_threshold`` (HARP: 1 cm) are retried from other starting rotations. Frames without
keypoints are interpolated from their neighbours.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor
from tqdm import tqdm

from harp_kaolin.config import InitConfig
from harp_kaolin.geometry import axis_angle_to_matrix

PALM = [0, 1, 5, 9, 13, 17]  # wrist and finger bases: nearly rigid with the global frame
NO_KEYPOINTS_HELP = (
    "no keypoints: fitting needs a rough per-frame hand pose to start from. Add keypoints.json to the "
    "sequence with, per frame, 'keypoints3d' (21 x [x, y, z] camera coordinates, meters) and/or "
    "'keypoints2d' (21 x [u, v, confidence] pixels) in \"harp21\" order (MediaPipe/OpenPose hand order), "
    "e.g. from a hand-pose estimator such as MediaPipe Hands; frames may be null."
)


@dataclass(frozen=True)
class InitResult:
    """Initial per-frame parameters.

    Attributes:
        pose: (T, P, 3); global_orient: (T, 3); transl: (T, 3); shape: (1, S).
        keypoints: (T, 21, 3) model keypoints after the fit (camera coordinates).
        residual: (T,) mean keypoint residual in meters (2D residuals converted at the frame's depth);
            NaN for frames without keypoints (interpolated).
        has_keypoints: (T,) bool.
    """

    pose: Tensor
    global_orient: Tensor
    transl: Tensor
    shape: Tensor
    keypoints: Tensor
    residual: Tensor
    has_keypoints: Tensor


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation (no scale) minimizing |R src + t - dst|."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((dst - md).T @ (src - ms))
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1, 1, d]) @ vt
    return r, md - r @ ms


def _pnp(model_pts: np.ndarray, image_pts: np.ndarray, camera: dict) -> tuple[np.ndarray, np.ndarray] | None:
    import cv2

    k = np.array([[camera["fx"], 0, camera["cx"]], [0, camera["fy"], camera["cy"]], [0, 0, 1]], np.float64)
    # OpenCV's pixel centres are at integers; ours (DESIGN.md) at +0.5.
    ok, rvec, tvec = cv2.solvePnP(
        model_pts.astype(np.float64), image_pts.astype(np.float64) - 0.5, k, None, flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        return None
    return cv2.Rodrigues(rvec)[0], tvec[:, 0]


def _rotvec(r: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.ascontiguousarray(r, dtype=np.float64))[0][:, 0]


def project(points: Tensor, camera: dict) -> Tensor:
    """Pixel coordinates (..., 2) of camera-space points (..., 3); pixel centres at +0.5."""
    z = points[..., 2].clamp_min(1e-4)
    u = camera["fx"] * points[..., 0] / z + camera["cx"]
    v = camera["fy"] * points[..., 1] / z + camera["cy"]
    return torch.stack([u, v], dim=-1)


def _objective(hand, params, shape, k3, k2, camera, cfg: InitConfig, per_frame: bool = False):
    pose, go, tr = params
    kp = hand.keypoints(pose, shape, go, tr)
    t = kp.shape[0]
    per = torch.zeros(t, dtype=kp.dtype)
    if k3 is not None:
        w3 = torch.isfinite(k3).all(-1).all(-1).float()
        per = per + w3 * 1e4 * (kp - torch.nan_to_num(k3)).square().sum(-1).mean(-1)
    if k2 is not None:
        valid = torch.isfinite(k2).all(-1)
        k2c = torch.nan_to_num(k2)
        conf = k2c[..., 2] * valid.float()
        r2 = (project(kp, camera) - k2c[..., :2]).square().sum(-1)
        per = per + cfg.weight_2d * (conf * r2).sum(-1) / conf.sum(-1).clamp_min(1e-6)
    per = per + cfg.pose_prior * pose.square().sum((-1, -2))
    if per_frame:
        return per, kp
    loss = per.sum() + cfg.shape_prior * shape.square().sum()
    if cfg.smooth > 0 and t > 1:
        loss = loss + cfg.smooth * sum((p[1:] - p[:-1]).square().sum() for p in params)
    return loss, kp


def _residual(kp: Tensor, k3, k2, camera) -> Tensor:
    res = torch.full((kp.shape[0],), float("nan"))
    if k2 is not None:
        valid = torch.isfinite(k2).all(-1) & (torch.nan_to_num(k2)[..., 2] > 0)
        px = torch.linalg.norm(project(kp, camera) - torch.nan_to_num(k2)[..., :2], dim=-1)
        m = (px * valid).sum(-1) / valid.sum(-1).clamp_min(1)
        meters = m * kp[:, 0, 2] / camera["fx"]
        res = torch.where(valid.any(-1), meters, res)
    if k3 is not None:
        valid = torch.isfinite(k3).all(-1).all(-1)
        d = torch.linalg.norm(kp - torch.nan_to_num(k3), dim=-1).mean(-1)
        res = torch.where(valid, d, res)
    return res


def _optimize(hand, start, shape, k3, k2, camera, cfg: InitConfig, fit_shape: bool, desc: str):
    params = [p.clone().requires_grad_() for p in start]
    shape = shape.clone().requires_grad_(fit_shape)
    opt = torch.optim.Adam(params + ([shape] if fit_shape else []), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    bar = tqdm(range(cfg.steps), desc=desc, leave=False, unit="step", disable=None)  # None: off without a TTY
    for _ in bar:
        opt.zero_grad()
        loss, _ = _objective(hand, params, shape, k3, k2, camera, cfg)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4g}")
    with torch.no_grad():
        per, kp = _objective(hand, params, shape, k3, k2, camera, cfg, per_frame=True)
    return [p.detach() for p in params], shape.detach(), per, kp


def _interpolate(values: Tensor, known: Tensor) -> Tensor:
    """Fill frames where ``known`` is False by linear interpolation (ends: nearest known frame)."""
    idx = torch.nonzero(known)[:, 0].numpy()
    t = np.arange(values.shape[0])
    flat = values.reshape(values.shape[0], -1).numpy()
    out = np.stack([np.interp(t, idx, flat[idx, j]) for j in range(flat.shape[1])], axis=1)
    return torch.from_numpy(out).to(values.dtype).reshape(values.shape)


def _interpolate_rotations(rotvecs: Tensor, known: Tensor) -> Tensor:
    """Slerp between the nearest known frames (rotation vectors (T, 3))."""
    idx = torch.nonzero(known)[:, 0]
    out = rotvecs.clone()
    for t in range(rotvecs.shape[0]):
        if known[t]:
            continue
        before, after = idx[idx < t], idx[idx > t]
        if len(before) == 0 or len(after) == 0:
            out[t] = rotvecs[(after if len(before) == 0 else before)[0 if len(before) == 0 else -1]]
            continue
        a, b = int(before[-1]), int(after[0])
        s = torch.tensor([(t - a) / (b - a)], dtype=rotvecs.dtype)
        out[t] = roma.rotvec_slerp(rotvecs[a], rotvecs[b], s)[0]
    return out


def initialize(
    hand,
    keypoints3d: Tensor | None,
    keypoints2d: Tensor | None,
    camera: dict,
    cfg: InitConfig | None = None,
    shape: Tensor | None = None,
) -> InitResult:
    """Fit pose, shape, global rotation and translation to keypoints.

    Args:
        hand: a ``HandModel``.
        keypoints3d: (T, 21, 3) camera coordinates in meters, NaN rows for missing frames, or None.
        keypoints2d: (T, 21, 3) (u, v, confidence) pixels, NaN rows for missing frames, or None.
        camera: dict with fx, fy, cx, cy (pixels, for the 2D term).
        cfg: InitConfig.
        shape: (1, S) fixed shape to use instead of fitting one (e.g. a known avatar's shape).

    Returns:
        InitResult. Raises ValueError when no frame has keypoints.
    """
    cfg = cfg or InitConfig()
    k3 = keypoints3d.float() if (keypoints3d is not None and cfg.use_3d) else None
    k2 = keypoints2d.float() if (keypoints2d is not None and cfg.use_2d) else None
    if k3 is None and k2 is None:
        raise ValueError(NO_KEYPOINTS_HELP)
    t = (k3 if k3 is not None else k2).shape[0]
    has3 = torch.isfinite(k3).all(-1).all(-1) if k3 is not None else torch.zeros(t, dtype=torch.bool)
    has2 = torch.isfinite(k2).all(-1).all(-1) if k2 is not None else torch.zeros(t, dtype=torch.bool)
    known = has3 | has2
    if not known.any():
        raise ValueError(NO_KEYPOINTS_HELP)
    fit_shape = shape is None and cfg.fit_shape
    shape = hand.default_shape(1) if shape is None else shape.detach().float()
    with torch.no_grad():
        rest = hand.keypoints(torch.zeros(1, hand.num_pose, 3), shape)[0].numpy()
    rot = np.zeros((t, 3))
    trans = np.tile([0.0, 0.0, 0.5], (t, 1))
    for i in range(t):
        if has3[i]:
            r, tr = _umeyama(rest[PALM], k3[i, PALM].numpy())
        elif has2[i]:
            sol = _pnp(rest[PALM], k2[i, PALM, :2].numpy(), camera)
            if sol is None:
                continue
            r, tr = sol
        else:
            continue
        rot[i], trans[i] = _rotvec(r), tr
    idx = torch.nonzero(known)[:, 0]

    def sel(x, rows=idx):
        return None if x is None else x[rows]

    start = [
        torch.zeros(len(idx), hand.num_pose, 3),
        torch.from_numpy(rot[idx.numpy()]).float(),
        torch.from_numpy(trans[idx.numpy()]).float(),
    ]
    params, shape, per, kp = _optimize(hand, start, shape, sel(k3), sel(k2), camera, cfg, fit_shape, "init")
    res = _residual(kp, sel(k3), sel(k2), camera)
    # Restarts: turn the starting rotation by 90 degrees about each palm axis and keep what fits best.
    for attempt in range(cfg.restarts):
        bad = torch.nonzero(res > cfg.restart_threshold)[:, 0]
        if len(bad) == 0:
            break
        axis = torch.zeros(3)
        axis[attempt % 3] = math.pi / 2 * (1 if attempt < 3 else -1)
        turn = axis_angle_to_matrix(axis)
        r0 = axis_angle_to_matrix(params[1][bad]) @ turn
        retry = [torch.zeros(len(bad), hand.num_pose, 3), roma.rotmat_to_rotvec(r0), params[2][bad]]
        k3b, k2b = sel(sel(k3), bad), sel(sel(k2), bad)
        p2, _, _, kp2 = _optimize(hand, retry, shape, k3b, k2b, camera, cfg, False, f"restart {attempt + 1}")
        res2 = _residual(kp2, k3b, k2b, camera)
        better = res2 < res[bad]
        for p, q in zip(params, p2):
            p[bad[better]] = q[better]
        kp[bad[better]] = kp2[better]
        res[bad[better]] = res2[better]
    still = int((res > cfg.restart_threshold).sum())
    if still:
        warnings.warn(
            f"initialization: {still} frame(s) keep a keypoint residual above "
            f"{cfg.restart_threshold * 1000:.0f} mm after {cfg.restarts} restarts",
            stacklevel=2,
        )
    pose = torch.zeros(t, hand.num_pose, 3)
    go, tr = torch.zeros(t, 3), torch.zeros(t, 3)
    pose[idx], go[idx], tr[idx] = params
    residual = torch.full((t,), float("nan"))
    residual[idx] = res
    if not known.all():
        pose = _interpolate(pose, known)
        tr = _interpolate(tr, known)
        go = _interpolate_rotations(go, known)
    with torch.no_grad():
        keypoints = hand.keypoints(pose, shape, go, tr)
    return InitResult(pose, go, tr, shape, keypoints, residual, known)
