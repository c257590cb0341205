"""The fitting pipeline end to end on a tiny synthetic sequence (64 px, 4 frames)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harp_kaolin.config import load_config
from harp_kaolin.data import SequenceError, load_sequence
from harp_kaolin.fit.data import prepare
from harp_kaolin.fit.init import initialize
from harp_kaolin.fit.pipeline import fit_sequence, load_hand_for
from harp_kaolin.fit.trainer import FitError, Fitter

SILHOUETTE_FACTOR = 1.5  # the geometry stage lowers the silhouette loss at least this much
PHOTOMETRIC_FACTOR = 1.5  # the appearance stages lower the photometric loss at least this much
SMALL = [
    "image_size=64",
    "texture_size=64",
    "init.steps=60",
    "init.restarts=0",
    "stages.0.epochs=8",
    "stages.1.epochs=4",
    "stages.2.epochs=8",
    "batch_frames=4",
]


@pytest.fixture(scope="module")
def tiny_sequence(tmp_path_factory):
    from harp_kaolin.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("seq") / "s", frames=4, size=64, seed=3, texture_size=64)


def make_fitter(seq_path, out, overrides=()):
    cfg = load_config("demo", [*SMALL, *overrides])
    data = prepare(load_sequence(seq_path), cfg.image_size)
    hand = load_hand_for(cfg)
    init = initialize(hand, data.keypoints3d, data.keypoints2d, data.camera, cfg.init)
    return Fitter(hand, data, cfg, init, out)


def all_frames_loss(fitter, name):
    weights = {name: 1.0}
    with torch.no_grad():
        return fitter.losses(torch.arange(fitter.num_frames), weights, torch.Generator().manual_seed(0))[
            name
        ].item()


def test_fit_lowers_silhouette_and_photometric_losses(tiny_sequence, tmp_path):
    fitter = make_fitter(tiny_sequence, tmp_path / "a")
    sil0, photo0 = all_frames_loss(fitter, "silhouette"), all_frames_loss(fitter, "photometric")
    fitter.run(progress=False)
    sil1, photo1 = all_frames_loss(fitter, "silhouette"), all_frames_loss(fitter, "photometric")
    print(f"silhouette {sil0:.4f} -> {sil1:.4f}, photometric {photo0:.4f} -> {photo1:.4f}")
    assert sil1 * SILHOUETTE_FACTOR < sil0
    assert photo1 * PHOTOMETRIC_FACTOR < photo0


def test_resume_matches_uninterrupted_run(tiny_sequence, tmp_path):
    overrides = ["stages.0.epochs=2", "stages.1.epochs=2", "stages.2.epochs=2", "batch_frames=2"]
    full = make_fitter(tiny_sequence, tmp_path / "full", overrides)
    full.run(progress=False)

    stopped = make_fitter(tiny_sequence, tmp_path / "stopped", overrides)
    calls = {"n": 0}

    def stop_mid_stage(state):
        calls["n"] += 1
        if calls["n"] == 7:  # stage 1, epoch 1, after its first step: mid-epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="checkpoint written to"):
        stopped.run(progress=False, on_step=stop_mid_stage)
    resumed = make_fitter(tiny_sequence, tmp_path / "stopped", overrides)
    resumed.run(resume=True, progress=False)
    for name, value in full.params.state_dict().items():
        torch.testing.assert_close(resumed.params.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_non_finite_steps_are_skipped_then_stop(tiny_sequence, tmp_path, monkeypatch):
    overrides = ["stages.0.epochs=3", "stages.1.epochs=0", "stages.2.epochs=0", "max_bad_steps=3"]
    fitter = make_fitter(tiny_sequence, tmp_path / "nan", overrides)
    fitter.save_checkpoint(None)
    before = {k: v.clone() for k, v in fitter.params.state_dict().items()}
    real = fitter.losses

    def poisoned(idx, weights, gen):
        terms = real(idx, weights, gen)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(fitter, "losses", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss or gradient, step skipped"):
        with pytest.raises(FitError, match="3 consecutive steps with non-finite"):
            fitter.run(progress=False)
    for k, v in fitter.params.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was applied
    assert (tmp_path / "nan" / "checkpoints" / "last.pt").is_file()


def test_fit_sequence_writes_the_avatar_folder(tiny_sequence, tmp_path):
    cfg = load_config("demo", [*SMALL, "stages.0.epochs=1", "stages.1.epochs=1", "stages.2.epochs=1"])
    out = tmp_path / "avatar"
    metrics = fit_sequence(tiny_sequence, out, cfg, progress=False)
    for rel in (
        "params.npz",
        "config.yaml",
        "metrics.json",
        "textures/albedo.png",
        "textures/normal.png",
        "renders/000000.png",
        "renders/fit.mp4",
        "checkpoints/last.pt",
    ):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["iou"] == pytest.approx(metrics["iou"]) and len(saved["iou_per_frame"]) == 4
    assert saved["lpips"] is None and "alexnet" in saved["lpips_note"].lower()
    assert saved["perceptual_loss"] in ("vgg16", "ms-ssim")
    for key in ("keypoint_error_mm", "pa_keypoint_error_mm", "albedo_psnr", "ms_ssim", "l1", "l1_masked"):
        assert np.isfinite(saved[key]), key
    assert set(saved["seconds"]) >= {"init", "geometry", "joint", "appearance"}
    assert len(saved["init_residual_mm_per_frame"]) == 4 and all(
        0 < r < 20 for r in saved["init_residual_mm_per_frame"]
    )


def _edit_keypoints(seq, tmp_path, edit):
    import shutil

    dst = tmp_path / "bad"
    shutil.copytree(seq, dst)
    kp = json.loads((dst / "keypoints.json").read_text())
    edit(kp)
    (dst / "keypoints.json").write_text(json.dumps(kp))
    return dst


def test_no_keypoints_anywhere_stops_with_help(tiny_sequence, tmp_path):
    def clear(kp):
        for f in kp["frames"]:
            f["keypoints3d"] = f["keypoints2d"] = None

    seq = _edit_keypoints(tiny_sequence, tmp_path, clear)
    with pytest.raises(ValueError, match="no keypoints: fitting needs a rough per-frame hand pose"):
        fit_sequence(seq, tmp_path / "out", load_config("demo", SMALL), progress=False)


def test_wrong_keypoint_count_and_nan_stop_with_the_file_and_frame(tiny_sequence, tmp_path):
    def damage(kp):
        kp["frames"][1]["keypoints3d"] = kp["frames"][1]["keypoints3d"][:20]
        kp["frames"][2]["keypoints2d"][3][0] = float("nan")

    seq = _edit_keypoints(tiny_sequence, tmp_path, damage)
    with pytest.raises(SequenceError) as err:
        fit_sequence(seq, tmp_path / "out", load_config("demo", SMALL), progress=False)
    text = str(err.value)
    assert "keypoints.json: frame 1: keypoints3d: expected 21 x 3 values, got shape [20, 3]" in text
    assert "keypoints.json: frame 2: keypoints2d: NaN or inf values at keypoints [3]" in text
