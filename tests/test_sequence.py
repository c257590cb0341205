"""Sequence loading and `harp check`: one test per bad-input case, each asserting its message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harp_kaolin.cli import main
from harp_kaolin.data import SequenceError, check_sequence, load_sequence

H, W, T = 24, 32, 3


def make_sequence(root: Path, frames: int = T, keypoints: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(frames):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / f"{i:06d}.png"
        )
        mask = np.zeros((H, W), np.uint8)
        mask[5 : 15 + i, 8:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:06d}.png")
    cam = {"width": W, "height": H, "fx": 40.0, "fy": 40.0, "cx": W / 2, "cy": H / 2}
    (root / "camera.json").write_text(json.dumps(cam))
    if keypoints:
        kp = {
            "order": "harp21",
            "frames": [
                {
                    "keypoints3d": (0.01 * np.arange(63).reshape(21, 3) + [0, 0, 0.5]).tolist(),
                    "keypoints2d": None,
                }
                for _ in range(frames)
            ],
        }
        (root / "keypoints.json").write_text(json.dumps(kp))
    return root


@pytest.fixture
def seq(tmp_path):
    return make_sequence(tmp_path / "seq")


def problems_of(path) -> list[str]:
    return check_sequence(path)[1]


def assert_problem(path, *fragments):
    problems = problems_of(path)
    assert any(all(f in p for f in fragments) for p in problems), problems


def test_valid_sequence_loads(seq):
    summary, problems = check_sequence(seq)
    assert problems == []
    assert summary["frames"] == T and (summary["width"], summary["height"]) == (W, H)
    assert summary["keypoints3d_frames"] == T and summary["keypoints2d_frames"] == 0
    cov = summary["mask_coverage"]
    assert cov["min"] == pytest.approx(10 * 12 / (H * W)) and cov["max"] == pytest.approx(12 * 12 / (H * W))
    s = load_sequence(seq)
    assert s.images.shape == (T, H, W, 3) and s.masks.shape == (T, H, W)
    assert s.keypoints3d.shape == (T, 21, 3) and s.keypoints2d is None
    assert float(s.masks[0].sum()) == 10 * 12


def test_missing_mask(seq):
    (seq / "masks" / "000001.png").unlink()
    assert_problem(seq, "missing mask for frame 000001.png")


def test_extra_mask(seq):
    shutil.copy(seq / "masks" / "000000.png", seq / "masks" / "000007.png")
    assert_problem(seq, "000007.png", "extra mask with no matching frame")


def test_image_size_mismatch(seq):
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(seq / "images" / "000002.png")
    assert_problem(seq, "images/000002.png", f"size {W}x{H + 2} differs from {W}x{H}")


def test_mask_size_mismatch(seq):
    Image.fromarray(np.full((H, W + 4), 255, np.uint8)).save(seq / "masks" / "000001.png")
    assert_problem(seq, "masks/000001.png", f"size {W + 4}x{H} differs")


def test_truncated_image(seq):
    path = seq / "images" / "000001.png"
    path.write_bytes(path.read_bytes()[:200])
    assert_problem(seq, "images/000001.png", "unreadable or truncated image")


def test_unreadable_image(seq):
    (seq / "images" / "000000.png").write_bytes(b"not an image at all")
    assert_problem(seq, "images/000000.png", "unreadable or truncated image")


def test_empty_mask(seq):
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seq / "masks" / "000002.png")
    assert_problem(seq, "masks/000002.png", "empty mask")


def test_non_binary_mask(seq):
    grey = np.zeros((H, W), np.uint8)
    grey[:, : W // 2] = 128
    grey[0, 0] = 255
    Image.fromarray(grey).save(seq / "masks" / "000000.png")
    assert_problem(seq, "masks/000000.png", "not a binary mask", "49.9% of pixels are grey")


def test_missing_camera(seq):
    (seq / "camera.json").unlink()
    assert_problem(seq, "camera.json", "missing")


def test_camera_missing_field(seq):
    cam = json.loads((seq / "camera.json").read_text())
    del cam["fy"]
    (seq / "camera.json").write_text(json.dumps(cam))
    assert_problem(seq, "camera.json", "missing field 'fy'")


def test_camera_bad_value(seq):
    cam = json.loads((seq / "camera.json").read_text())
    cam["fx"], cam["cx"] = -3, "middle"
    (seq / "camera.json").write_text(json.dumps(cam))
    assert_problem(seq, "camera.json", "'fx' must be positive")
    assert_problem(seq, "camera.json", "'cx' must be a finite number, got 'middle'")


def test_camera_not_json(seq):
    (seq / "camera.json").write_text("{width: 3")
    assert_problem(seq, "camera.json", "not valid JSON")


def test_keypoints_wrong_count(seq):
    kp = json.loads((seq / "keypoints.json").read_text())
    kp["frames"][1]["keypoints3d"] = kp["frames"][1]["keypoints3d"][:20]
    (seq / "keypoints.json").write_text(json.dumps(kp))
    assert_problem(seq, "keypoints.json", "frame 1: keypoints3d", "expected 21 x 3 values, got shape [20, 3]")


def test_keypoints_wrong_order(seq):
    kp = json.loads((seq / "keypoints.json").read_text())
    kp["order"] = "mano16"
    (seq / "keypoints.json").write_text(json.dumps(kp))
    assert_problem(seq, "keypoints.json", "'order' must be \"harp21\", got 'mano16'")


def test_keypoints_nan(seq):
    text = (seq / "keypoints.json").read_text()
    kp = json.loads(text)
    kp["frames"][2]["keypoints3d"][4][1] = float("nan")
    (seq / "keypoints.json").write_text(json.dumps(kp))  # json writes NaN, which Python reads back
    assert_problem(seq, "keypoints.json", "frame 2: keypoints3d", "NaN or inf values at keypoints [4]")


def test_keypoints_frame_count(seq):
    kp = json.loads((seq / "keypoints.json").read_text())
    kp["frames"].pop()
    (seq / "keypoints.json").write_text(json.dumps(kp))
    assert_problem(seq, "keypoints.json", f"has {T - 1} frame entries but the sequence has {T} frames")


def test_no_frames(tmp_path):
    root = make_sequence(tmp_path / "s", frames=0, keypoints=False)
    assert_problem(root, "images", "no frames")


def test_missing_folder(tmp_path):
    assert_problem(tmp_path / "nothing", "sequence folder does not exist")


def test_load_raises_with_every_problem(seq):
    (seq / "masks" / "000001.png").unlink()
    (seq / "camera.json").write_text("[]")
    with pytest.raises(SequenceError) as err:
        load_sequence(seq)
    assert len(err.value.problems) == 2
    assert "missing mask for frame 000001.png" in str(err.value)


def test_cli_check(seq, capsys):
    assert main(["check", str(seq)]) == 0
    out = capsys.readouterr().out
    assert f"frames:    {T}" in out and "mask coverage: min 15.6%" in out and "ok" in out
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seq / "masks" / "000002.png")
    assert main(["check", str(seq)]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "empty mask" in err


def test_import_video_roundtrip(tmp_path, capsys):
    import cv2

    rng = np.random.default_rng(1)
    size = (64, 48)  # w, h
    vw = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    mw = cv2.VideoWriter(str(tmp_path / "m.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(6):
        vw.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        m = np.zeros((size[1], size[0], 3), np.uint8)
        m[10:30, 10 + i : 40] = 255
        mw.write(m)
    vw.release()
    mw.release()
    cam = {"width": size[0], "height": size[1], "fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0}
    (tmp_path / "cam.json").write_text(json.dumps(cam))
    out = tmp_path / "seq"
    args = ["import-video", str(tmp_path / "v.mp4"), "--masks", str(tmp_path / "m.mp4")]
    assert main([*args, "--camera", str(tmp_path / "cam.json"), "--out", str(out), "--every", "2"]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    summary, problems = check_sequence(out)
    assert problems == [] and summary["frames"] == 3
    assert main([*args, "--camera", str(tmp_path / "cam.json"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
