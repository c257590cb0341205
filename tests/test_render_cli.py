"""`harp render` (novel views, novel poses, relighting) and benchmarks/render_fps.py."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harp_kaolin.cli import main
from harp_kaolin.io import read_png
from tests.test_evaluate import TRAIN_FRAMES, training_poses, write_avatar

ROOT = Path(__file__).resolve().parents[1]
ATOL_M = 1e-5  # meters, float32 rigid transforms


@pytest.fixture(scope="module")
def avatar_dir(tmp_path_factory, anny_hand_sub):
    return write_avatar(
        tmp_path_factory.mktemp("render") / "avatar", anny_hand_sub, training_poses(anny_hand_sub)
    )


@pytest.fixture(scope="module")
def avatar(avatar_dir):
    from harp_kaolin.avatar import load_avatar

    return load_avatar(avatar_dir)


def _training(avatar):
    from harp_kaolin.novel import Poses

    p = avatar.params
    return Poses(p.pose.detach(), p.global_orient.detach(), p.transl.detach())


def test_orbit_turns_about_the_vertical_axis_through_the_centre(avatar):
    from harp_kaolin.novel import orbit_poses

    hand, params = avatar.hand, avatar.params
    base = _training(avatar).select([1])
    orbit = orbit_poses(hand, params, base, 4)
    with torch.no_grad():
        v = hand(orbit.pose, params.shape, orbit.global_orient, orbit.transl, params.displacement).vertices
    centre = (v[0].amin(0) + v[0].amax(0)) / 2
    for k in range(4):
        c, s = math.cos(k * math.pi / 2), math.sin(k * math.pi / 2)
        ry = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        torch.testing.assert_close(v[k], (v[0] - centre) @ ry.T + centre, atol=ATOL_M, rtol=0)
    torch.testing.assert_close(orbit.global_orient[0], base.global_orient[0], atol=1e-6, rtol=0)


def test_relighting_changes_only_the_shading(avatar):
    from harp_kaolin.novel import make_renderer, render_poses

    renderer = make_renderer(avatar, avatar.camera)
    poses = _training(avatar).select([0])
    fitted = render_poses(avatar.hand, avatar.params, renderer, poses)
    same = render_poses(avatar.hand, avatar.params, renderer, poses, light=avatar.params.light.detach())
    other = render_poses(avatar.hand, avatar.params, renderer, poses, light=torch.tensor([-0.4, 0.3, 0.1]))
    torch.testing.assert_close(same.images, fitted.images)
    torch.testing.assert_close(other.silhouettes, fitted.silhouettes)
    assert (other.images - fitted.images).abs().amax() > 0.1


def test_render_orbit_light_and_size(avatar_dir, tmp_path, capsys):
    out = tmp_path / "orbit"
    argv = ["render", str(avatar_dir), "--orbit", "3", "--light", "0.1,-0.2,0.3", "--size", "48"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    assert "frames per second" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    assert read_png(out / "000000.png").shape == (48, 48, 3)
    assert (out / "render.mp4").stat().st_size > 0


def test_render_novel_poses_from_json_and_npz(avatar, avatar_dir, tmp_path):
    poses = _training(avatar)
    doc = {"pose": poses.pose[:2].tolist()}  # no placement: frame --frame's global_orient / transl
    (tmp_path / "poses.json").write_text(json.dumps(doc))
    assert (
        main(
            ["render", str(avatar_dir), "--poses", str(tmp_path / "poses.json"), "--out", str(tmp_path / "j")]
        )
        == 0
    )
    assert len(list((tmp_path / "j").glob("*.png"))) == 2
    np.savez(tmp_path / "poses.npz", pose=poses.pose.numpy(), global_orient=poses.global_orient.numpy(),
             transl=poses.transl.numpy(), model=np.array("anny"))  # fmt: skip
    assert (
        main(
            ["render", str(avatar_dir), "--poses", str(tmp_path / "poses.npz"), "--out", str(tmp_path / "n")]
        )
        == 0
    )
    assert len(list((tmp_path / "n").glob("*.png"))) == TRAIN_FRAMES
    # The avatar's own poses give the training renders.
    from harp_kaolin.novel import make_renderer, render_poses

    train = render_poses(avatar.hand, avatar.params, make_renderer(avatar, avatar.camera), poses.select([0]))
    assert np.abs(read_png(tmp_path / "n" / "000000.png") - train.images[0].numpy()).max() <= 1 / 255 + 1e-6


def _bad_poses(name: str, p: int):
    return {
        "wrong_joints.npz": {"pose": np.zeros((2, 15, 3))},
        "frames.json": {"pose": np.zeros((2, p, 3)).tolist(), "transl": [[0, 0, 0.5]]},
        "other_model.npz": {"pose": np.zeros((1, p, 3)), "model": np.array("mano")},
        "poses.txt": None,
    }[name]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_joints.npz", "'pose' has 15 joints per frame but the avatar's anny hand has"),
        ("frames.json", "'transl' must be (2, 3)"),
        ("other_model.npz", "'mano' hand model"),
        ("poses.txt", "must be .npz or .json"),
    ],
)
def test_render_poses_file_errors_name_the_file(avatar, avatar_dir, tmp_path, capsys, name, message):
    path = tmp_path / name
    content = _bad_poses(name, avatar.hand.num_pose)
    if path.suffix == ".npz":
        np.savez(path, **content)
    else:
        path.write_text(json.dumps(content))
    assert main(["render", str(avatar_dir), "--poses", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not (tmp_path / "o").exists()


def test_render_bad_light_is_an_error(avatar_dir, tmp_path, capsys):
    assert main(["render", str(avatar_dir), "--light", "1,2", "--out", str(tmp_path / "o")]) == 2
    assert "--light must be three numbers" in capsys.readouterr().err


def test_render_fps_benchmark_json(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script: timing.py beside it
    spec = importlib.util.spec_from_file_location("render_fps", ROOT / "benchmarks" / "render_fps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--size", "48", "--frames", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json"]
    assert bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fps"] > 0 and result["ms_per_frame"] == pytest.approx(1000 / result["fps"], rel=0.01)
    assert result["device"] == "cpu" and result["size"] == 48 and result["covered_fraction"] > 0
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the CPU as the kernel names it, so that figures from different machines differ
        model = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("model name"))
        assert result["device_name"].startswith(model.split(":", 1)[1].strip() + " (family ")


def test_render_benchmark_profile_json(capsys, monkeypatch):
    """benchmarks/render.py on a small image: one JSON object with both backends' times and where the
    time goes (the Warp path's per-pixel steps are one op, one stage)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("render_bench", ROOT / "benchmarks" / "render.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--size", "32", "--batch", "1", "--repeats", "2", "--torch-repeats", "1", "--warmup", "0"]
    assert bench.main([*argv, "--profile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["warp_ms"] > 0 and result["torch_ms"] > 0 and result["device"] == "cpu"
    assert result["image_max_abs_diff"] < 1e-4
    stages = result["stages_ms"]
    assert list(stages["warp"]) == ["rasterize", "surface_frames", "shadow_map", "pixels"]
    assert list(stages["torch"]) == [
        "rasterize", "surface_frames", "interpolate", "shadow_map", "shadow_lookup", "shade", "composite",
    ]  # fmt: skip
    assert all(len(ms) == 2 and min(ms) >= 0 for times in stages.values() for ms in times.values())


def test_paired_benchmark_runs_each_side_from_its_own_checkout(tmp_path):
    """benchmarks/paired.py: side B imports the packages of the checkout it is given (here a copy made of
    links, while the installed package points at this one), the pairs alternate, and the reported ratio is
    the median of the per-pair ratios of the reported runs."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("harp_kaolin", "warp_kernels", "benchmarks"):
        (other / name).symlink_to(ROOT / name, target_is_directory=True)
    argv = [sys.executable, str(ROOT / "benchmarks" / "paired.py"), "--b", str(other), "--json"]
    argv += ["--size", "32", "--batch", "1", "--steps", "4", "--warmup", "0", "--env-b", "HARP_PAIRED=1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["a_code"] == [str(ROOT / "harp_kaolin"), str(ROOT / "warp_kernels")]
    assert result["b_code"] == [str(other / "harp_kaolin"), str(other / "warp_kernels")]
    assert result["env_b"] == ["HARP_PAIRED=1"] and result["steps"] == 4
    a, b = result["a_runs_ms"], result["b_runs_ms"]
    assert len(a) == len(b) == 4 and min(a + b) > 0
    assert result["ratio"] == pytest.approx(statistics.median(y / x for x, y in zip(a, b)), rel=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [(["--b", "/"], "not a harp-kaolin checkout"), (["--env-b", "NOVALUE"], "expected NAME=VALUE")],
)
def test_paired_benchmark_rejects_bad_sides(args, message):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paired.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and message in done.stderr
