"""`harp evaluate` wiring: image metrics on known cases, the training-sequence mode, frame-name checks.

Also holds the small avatar and sequence builders that test_posefit.py and test_render_cli.py use: an
avatar folder made directly from AvatarParams (the synthetic hand's texture and light, given poses) and
sequences rendered from it (masks = its silhouette >= 0.5, so the avatar explains them exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harp_kaolin import metrics as M
from harp_kaolin.cli import main
from harp_kaolin.evaluate import image_metrics
from harp_kaolin.io import read_png

SIZE = 64  # px, image side of the test avatar and sequences
TEXTURE = 128  # albedo / normal map side
TRAIN_FRAMES = 4
CONFIG_OVERRIDES = (
    f"image_size={SIZE}",
    f"texture_size={TEXTURE}",
    "init.steps=100",
    "init.restarts=0",
    "stages.0.lr.pose=0.01",  # the pose-only fits take their rates from the first stage
    "stages.0.lr.global_orient=0.01",
    "stages.0.lr.transl=0.002",
)
ATOL = 1e-6
PNG_L1 = 0.004  # 8-bit quantization of the rendered frames


# ------------------------------------------------------------------------------------------- builders
def camera(size: int = SIZE) -> dict:
    return {"width": size, "height": size, "fx": 1.4 * size, "fy": 1.4 * size, "cx": size / 2, "cy": size / 2}


def write_avatar(folder: Path, hand, poses) -> Path:
    """An avatar folder (params.npz, config.yaml) with the synthetic albedo and light, in ``poses``."""
    from harp_kaolin.config import load_config, save_config
    from harp_kaolin.fit.params import AvatarParams
    from harp_kaolin.fit.pipeline import save_params
    from harp_kaolin.synth import LIGHT, texture_image

    cfg = load_config("demo", CONFIG_OVERRIDES)
    p = AvatarParams(len(poses), hand.num_pose, hand.num_shape, hand.num_vertices, TEXTURE)
    with torch.no_grad():
        p.pose.copy_(poses.pose)
        p.global_orient.copy_(poses.global_orient)
        p.transl.copy_(poses.transl)
        p.albedo.copy_(texture_image(TEXTURE))
        p.light.copy_(torch.tensor(LIGHT["position"]))
        p.ambient.fill_(float(torch.logit(torch.tensor(LIGHT["ambient"]))))
    names = [f"{t:06d}.png" for t in range(len(poses))]
    folder.mkdir(parents=True)
    save_params(folder / "params.npz", p, names, camera(), cfg)
    save_config(cfg, folder / "config.yaml")
    return folder


def write_sequence(folder: Path, avatar_dir: Path, poses, noise_mm: float = 0.0, seed: int = 0) -> Path:
    """A sequence folder rendered by the avatar in ``poses``, with keypoints + N(0, noise_mm) and gt/."""
    from harp_kaolin.avatar import load_avatar
    from harp_kaolin.fit.init import project
    from harp_kaolin.io import write_png
    from harp_kaolin.novel import make_renderer, render_poses

    avatar = load_avatar(avatar_dir)
    frames = render_poses(avatar.hand, avatar.params, make_renderer(avatar, avatar.camera), poses)
    for t in range(len(poses)):
        write_png(folder / "images" / f"{t:06d}.png", frames.images[t])
        mask = (frames.silhouettes[t] >= 0.5).numpy().astype(np.uint8) * 255
        write_png(folder / "masks" / f"{t:06d}.png", mask)
    with torch.no_grad():
        kp = avatar.hand.keypoints(poses.pose, avatar.params.shape, poses.global_orient, poses.transl)
    noisy = kp + noise_mm / 1000 * torch.randn(kp.shape, generator=torch.Generator().manual_seed(seed))
    uv = project(noisy, avatar.camera)
    k2 = torch.cat([uv, torch.ones_like(uv[..., :1])], -1)
    frames_json = [{"keypoints3d": a.tolist(), "keypoints2d": b.tolist()} for a, b in zip(noisy, k2)]
    (folder / "keypoints.json").write_text(json.dumps({"order": "harp21", "frames": frames_json}))
    (folder / "camera.json").write_text(json.dumps(avatar.camera))
    (folder / "gt").mkdir()
    gt_frames = [{"keypoints3d": a.tolist(), "keypoints2d": None} for a in kp]
    (folder / "gt" / "keypoints.json").write_text(json.dumps({"order": "harp21", "frames": gt_frames}))
    return folder


def training_poses(hand):
    from harp_kaolin.novel import Poses
    from harp_kaolin.synth import synth_poses

    return Poses(*synth_poses(hand, TRAIN_FRAMES, seed=0))


@pytest.fixture(scope="module")
def avatar_and_training(tmp_path_factory, anny_hand_sub):
    root = tmp_path_factory.mktemp("evaluate")
    poses = training_poses(anny_hand_sub)
    avatar = write_avatar(root / "avatar", anny_hand_sub, poses)
    return avatar, write_sequence(root / "train", avatar, poses)


# ------------------------------------------------------------------------------------------- metrics
def _frames(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = 0.8 * torch.rand(2, 32, 32, 3, generator=g)
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:24, 4:28] = 1.0  # 384 of 1024 pixels
    return images, masks


def test_image_metrics_identical_inputs_are_perfect():
    images, masks = _frames()
    renders = M.on_white(images.permute(0, 3, 1, 2), masks).permute(0, 2, 3, 1)
    m = M.summarize(image_metrics(renders, masks, images, masks))
    assert m["iou"] == pytest.approx(1.0, abs=ATOL)
    assert m["l1"] == pytest.approx(0.0, abs=ATOL)
    assert m["l1_masked"] == pytest.approx(0.0, abs=ATOL)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["iou_per_frame"] == pytest.approx([1.0, 1.0], abs=ATOL)
    assert m["lpips"] is None or m["lpips"] == pytest.approx(0.0, abs=1e-4)


def test_image_metrics_known_perturbation():
    images, masks = _frames()
    renders = M.on_white(images.permute(0, 3, 1, 2), masks).permute(0, 2, 3, 1)
    renders = renders + 0.1 * masks[..., None]  # +0.1 on every foreground value (all stay <= 0.9)
    silhouettes = masks.clone()
    silhouettes[0, 8:16] = 0.0  # frame 0: half of the foreground lost -> IoU 1/2
    silhouettes[1, 0:4, 4:28] = 1.0  # frame 1: 96 extra pixels -> IoU 384 / 480
    per_frame = image_metrics(renders, silhouettes, images, masks)
    torch.testing.assert_close(per_frame["iou"], torch.tensor([0.5, 384 / 480]))
    torch.testing.assert_close(per_frame["l1_masked"], torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(per_frame["l1"], torch.tensor([0.1 * 384 / 1024] * 2))
    assert (per_frame["ms_ssim"] < 1).all()


# ------------------------------------------------------------------------------------------- harp evaluate
def test_evaluate_training_sequence(avatar_and_training, tmp_path, capsys):
    avatar, train = avatar_and_training
    out = tmp_path / "eval"
    assert main(["evaluate", str(avatar), str(train), "--out", str(out), "--device", "cpu"]) == 0
    assert "training frames" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "train"
    assert m["iou"] == pytest.approx(1.0)  # masks are the avatar's own silhouettes
    assert m["l1"] < PNG_L1 and m["l1_masked"] < 2 * PNG_L1
    assert m["ms_ssim"] > 0.99
    assert m["keypoint_error_mm"] < 1e-3
    assert len(m["iou_per_frame"]) == TRAIN_FRAMES
    assert sorted(p.name for p in (out / "renders").glob("*.png")) == [f"{t:06d}.png" for t in range(4)]
    assert (out / "renders" / "eval.mp4").stat().st_size > 0
    assert read_png(out / "renders" / "000000.png").shape == (SIZE, 3 * SIZE, 3)  # input | render | overlay


def test_evaluate_train_mode_rejects_other_frames(avatar_and_training, tmp_path, capsys):
    avatar, train = avatar_and_training
    other = tmp_path / "other"
    other.mkdir()
    for d in ("images", "masks"):
        (other / d).mkdir()
        for t in range(TRAIN_FRAMES - 1):  # one frame fewer and renamed
            (other / d / f"frame{t}.png").write_bytes((train / d / f"{t:06d}.png").read_bytes())
    (other / "camera.json").write_text((train / "camera.json").read_text())
    code = main(["evaluate", str(avatar), str(other), "--mode", "train", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(other / "images") in err and "frame names differ" in err and "--mode test" in err
    assert not (tmp_path / "e").exists()
