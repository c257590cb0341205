"""Initialization from keypoints."""

from __future__ import annotations

import pytest
import torch

from harp_kaolin.config import InitConfig
from harp_kaolin.fit.init import initialize, project

EXACT_KEYPOINT_TOL_MM = 2.0
CAMERA = {"width": 128, "height": 128, "fx": 180.0, "fy": 180.0, "cx": 64.0, "cy": 64.0}


def truth(hand, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pose = 0.25 * torch.randn(frames, hand.num_pose, 3, generator=g)
    pose[..., 2] = pose[..., 2].abs() + 0.2  # curls, as real hands do
    rot = torch.tensor([[1.2, -1.2, 1.2]]) + 0.3 * torch.randn(frames, 3, generator=g)
    trans = torch.tensor([[0.0, 0.05, 0.5]]) + 0.02 * torch.randn(frames, 3, generator=g)
    shape = torch.tensor([[0.8, -0.5, 0.2, 0.0, -0.4, 0.6]])
    return pose, shape, rot, trans, hand.keypoints(pose, shape, rot, trans)


def test_recovers_known_pose_from_exact_3d_keypoints(anny_hand):
    *_, kp = truth(anny_hand)
    r = initialize(anny_hand, kp, None, CAMERA, InitConfig(steps=300))
    dist = torch.linalg.norm(r.keypoints - kp, dim=-1)
    assert dist.mean() * 1000 < EXACT_KEYPOINT_TOL_MM
    assert torch.allclose(r.residual, dist.mean(-1), atol=1e-6)  # residual = mean distance per frame


def test_recovers_from_exact_2d_keypoints(anny_hand):
    *_, kp = truth(anny_hand, seed=3)
    k2 = torch.cat([project(kp, CAMERA), torch.ones(*kp.shape[:2], 1)], -1)
    r = initialize(anny_hand, None, k2, CAMERA, InitConfig(steps=300))
    px = torch.linalg.norm(project(r.keypoints, CAMERA) - k2[..., :2], dim=-1).mean()
    assert px < 1.0


def test_frames_without_keypoints_are_interpolated(anny_hand):
    *_, kp = truth(anny_hand, frames=5, seed=1)
    holes = kp.clone()
    holes[2] = float("nan")
    r = initialize(anny_hand, holes, None, CAMERA, InitConfig(steps=200))
    assert r.has_keypoints.tolist() == [True, True, False, True, True]
    assert torch.isnan(r.residual[2]) and torch.isfinite(r.residual[[0, 1, 3, 4]]).all()
    # The interpolated frame lies between its neighbours.
    mid = 0.5 * (r.transl[1] + r.transl[3])
    assert torch.allclose(r.transl[2], mid, atol=1e-6)


def test_no_keypoints_anywhere_says_how_to_provide_them(anny_hand):
    nan = torch.full((3, 21, 3), float("nan"))
    with pytest.raises(ValueError, match="no keypoints: .*keypoints.json.*harp21"):
        initialize(anny_hand, nan, nan, CAMERA)
    with pytest.raises(ValueError, match="no keypoints"):
        initialize(anny_hand, None, None, CAMERA)
