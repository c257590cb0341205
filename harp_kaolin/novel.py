"""Uses of a fitted avatar: novel views, novel poses and relighting (``harp render``).

- Novel views (``orbit_poses``): a turntable. The hand turns about the vertical axis of the camera
  (camera y) through the centre of its bounding box; camera and light stay where they are.
- Novel poses (``load_poses``): per-frame ``pose`` (T, P, 3) rotation vectors, optional
  ``global_orient`` (T, 3) and ``transl`` (T, 3), from
    * an .npz with those keys: another avatar's params.npz, ``harp refine-pose``'s poses.npz, or a
      synthetic sequence's gt/params.npz (a ``model`` entry, when present, must name the avatar's hand);
    * a .json object with the same keys as nested lists, e.g.
      ``{"pose": [[[rx, ry, rz], ...P], ...T], "global_orient": [[rx, ry, rz], ...T], "transl": [...]}``.
  Without ``global_orient`` / ``transl`` every frame is placed like the first training frame.
- Relighting: any light position (camera coordinates, meters) instead of the fitted one.

``render_poses`` is the render path (hand forward + renderer forward, no gradients); it times itself so
that ``harp render`` and ``benchmarks/render_fps.py`` report the same frames per second.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from harp_kaolin.fit.params import AvatarParams


@dataclass(frozen=True)
class Poses:
    """Per-frame hand placement.

    Attributes:
        pose: (T, P, 3) rotation vectors of the posed joints.
        global_orient: (T, 3) rotation vectors, model frame -> camera.
        transl: (T, 3) translations, meters.
    """

    pose: Tensor
    global_orient: Tensor
    transl: Tensor

    def __len__(self) -> int:
        return self.pose.shape[0]

    def select(self, idx) -> Poses:
        return Poses(self.pose[idx], self.global_orient[idx], self.transl[idx])


@dataclass(frozen=True)
class Frames:
    """Rendered frames.

    Attributes:
        images: (T, H, W, 3) composited on white, CPU.
        silhouettes: (T, H, W) soft silhouettes, CPU.
        batch_seconds: time of each call of the render path (hand forward + renderer forward),
            synchronized; the first call also loads kernels.
        batch: frames per call.
    """

    images: Tensor
    silhouettes: Tensor
    batch_seconds: list[float]
    batch: int

    @property
    def seconds(self) -> float:
        return sum(self.batch_seconds)

    @property
    def fps(self) -> float:
        """Frames per second of the render path, leaving out the first call when there are others."""
        n, times = self.images.shape[0], self.batch_seconds
        if len(times) > 1:
            n, times = n - self.batch, times[1:]
        return n / max(sum(times), 1e-9)


def make_renderer(avatar, camera: dict, device: str = "cpu"):
    """The avatar's renderer (backend, shadows and bias of its config) for ``camera``."""
    from harp_kaolin.fit.trainer import build_renderer

    return build_renderer(camera, avatar.hand, avatar.config).to(device)


def render_camera(camera: dict, size: int | None) -> dict:
    """``camera`` rescaled so that its longest side is ``size`` pixels (unchanged for None)."""
    from harp_kaolin.fit.data import scale_camera

    if size is None:
        return dict(camera)
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    s = size / max(camera["width"], camera["height"])
    return scale_camera(camera, max(1, round(camera["width"] * s)), max(1, round(camera["height"] * s)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_poses(
    hand,
    params: AvatarParams,
    renderer,
    poses: Poses,
    light: Tensor | None = None,
    batch: int = 1,
    progress: bool = False,
) -> Frames:
    """Render the avatar (shape, displacement, textures, ambient of ``params``) in ``poses``.

    Args:
        hand: the avatar's hand model; params: its AvatarParams; renderer: a ``Renderer`` (same device).
        poses: T placements.
        light: (3,) light position in camera coordinates; default the fitted one.
        batch: frames per renderer call.
        progress: show a progress bar.

    Returns:
        Frames on the CPU, with the time of the render path (output copies to the CPU excluded).
    """
    device = params.pose.device
    light = params.light if light is None else torch.as_tensor(light, dtype=torch.float32, device=device)
    images, sils, seconds = [], [], []
    bar = tqdm(total=len(poses), desc="render", unit="frame", disable=None if progress else True)
    with torch.no_grad():
        albedo, normals = params.albedo_image(), params.normal_vectors()
        for s in range(0, len(poses), batch):
            p = poses.select(slice(s, s + batch))
            _sync(device)
            start = time.perf_counter()
            out = hand(p.pose.to(device), params.shape, p.global_orient.to(device), p.transl.to(device),
                       params.displacement)  # fmt: skip
            _check_in_front(out.vertices, s)
            r = renderer(out.vertices, albedo, normals, light, params.ambient)
            _sync(device)
            seconds.append(time.perf_counter() - start)
            images.append(r.image.cpu())
            sils.append(r.silhouette.cpu())
            bar.update(p.pose.shape[0])
    bar.close()
    return Frames(torch.cat(images), torch.cat(sils), seconds, batch)


def _check_in_front(vertices: Tensor, first: int) -> None:
    z = vertices[..., 2].amin(1)
    bad = (z <= 1e-3).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(
            f"frame {first + i}: the hand is not in front of the camera (nearest vertex at z = "
            f"{float(z[i]):.3f} m); check the poses' global_orient / transl (camera coordinates, meters)"
        )


# ------------------------------------------------------------------------------------------ novel views
def _rotation_y(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def orbit_poses(hand, params: AvatarParams, base: Poses, views: int) -> Poses:
    """``views`` turntable placements of one frame: a full turn about the camera's vertical axis.

    Args:
        hand: the hand model; params: the avatar (its shape and displacement give the centre).
        base: one placement (T = 1).
        views: number of views, evenly spaced over 360 degrees (the first is ``base``).

    Returns:
        Poses with T = ``views``: same finger pose, rotated global_orient, moved transl.
    """
    import roma

    if views < 1:
        raise ValueError(f"orbit needs at least 1 view, got {views}")
    if len(base) != 1:
        raise ValueError(f"orbit turns one frame, got {len(base)}")
    with torch.no_grad():
        dev = params.pose.device
        v = hand(base.pose.to(dev), params.shape, base.global_orient.to(dev), base.transl.to(dev),
                 params.displacement).vertices[0].cpu()  # fmt: skip
    centre = (v.amin(0) + v.amax(0)) / 2
    r0 = roma.rotvec_to_rotmat(base.global_orient[0].cpu().double()).float()
    t0 = base.transl[0].cpu()
    rots, trans = [], []
    for k in range(views):
        ry = _rotation_y(2 * math.pi * k / views)
        # v' = Ry (v - c) + c with v = R x + t: R' = Ry R, t' = Ry (t - c) + c.
        rots.append(roma.rotmat_to_rotvec((ry @ r0).double()).float())
        trans.append(ry @ (t0 - centre) + centre)
    return Poses(base.pose.cpu().expand(views, -1, -1).clone(), torch.stack(rots), torch.stack(trans))


# ------------------------------------------------------------------------------------------ novel poses
def load_poses(path: str | Path, hand, default: Poses) -> Poses:
    """Read a poses file (.npz or .json, see the module docstring) and check it against ``hand``.

    Args:
        path: the file.
        hand: the avatar's hand model (its ``num_pose`` and ``name`` are checked).
        default: one placement (T = 1) for frames without global_orient / transl.

    Raises:
        ValueError: naming the file and what is wrong (format, missing key, joint count, frame counts).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: poses file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    elif path.suffix == ".json":
        try:
            arrays = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(arrays, dict):
            raise ValueError(
                f"{path}: expected a JSON object with 'pose' (and optional global_orient, transl)"
            )
    else:
        raise ValueError(f"{path}: poses file must be .npz or .json, got {path.suffix or 'no extension'!r}")
    model = str(np.asarray(arrays.get("model", hand.name)))
    if model != hand.name:
        raise ValueError(f"{path}: poses of the {model!r} hand model; the avatar uses {hand.name!r}")
    if "pose" not in arrays:
        raise ValueError(f"{path}: no 'pose' entry (expected (T, {hand.num_pose}, 3) rotation vectors)")
    pose = _array(arrays["pose"], path, "pose")
    p = hand.num_pose
    if pose.ndim == 2 and pose.shape[1] == 3 * p:
        pose = pose.reshape(-1, p, 3)
    if pose.ndim != 3 or pose.shape[2] != 3:
        raise ValueError(
            f"{path}: 'pose' must be (T, {p}, 3) rotation vectors, got shape {tuple(pose.shape)}"
        )
    if pose.shape[1] != p:
        joints = [hand.joint_names[j] for j in hand.pose_joints]
        raise ValueError(
            f"{path}: 'pose' has {pose.shape[1]} joints per frame but the avatar's {hand.name} hand has {p} "
            f"posed joints ({joints[0]} ... {joints[-1]}); were these poses made for another hand model?"
        )
    t = pose.shape[0]
    if t < 1:
        raise ValueError(f"{path}: 'pose' has no frames")
    out = {"pose": pose}
    for key in ("global_orient", "transl"):
        if key in arrays:
            value = _array(arrays[key], path, key).reshape(-1, 3) if np.size(arrays[key]) % 3 == 0 else None
            if value is None or value.shape[0] != t:
                got = tuple(np.shape(arrays[key]))
                raise ValueError(f"{path}: '{key}' must be ({t}, 3) like the {t} poses, got shape {got}")
            out[key] = value
        else:
            out[key] = getattr(default, key).cpu().expand(t, 3).clone()
    return Poses(out["pose"], out["global_orient"], out["transl"])


def _array(value, path: Path, key: str) -> Tensor:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: '{key}' is not a numeric array") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: '{key}' has non-finite values")
    return torch.from_numpy(arr)


def parse_light(text: str) -> Tensor:
    """``"x,y,z"`` (camera coordinates, meters) -> (3,) tensor."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--light must be three numbers x,y,z (camera coordinates, meters), got {text!r}")
    return torch.tensor(values)


# ------------------------------------------------------------------------------------------ harp render
def render_novel(
    avatar_dir: str | Path,
    out_dir: str | Path,
    orbit: int | None = None,
    poses_file: str | Path | None = None,
    light: Tensor | None = None,
    size: int | None = None,
    frame: int = 0,
    batch: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """``harp render``: novel views, novel poses and relighting of an avatar as PNGs and an mp4.

    Args:
        avatar_dir: avatar folder written by ``harp fit``.
        out_dir: output folder: 000000.png, ... and render.mp4.
        orbit: number of turntable views of one frame (``frame`` of the poses); None: every frame.
        poses_file: .npz / .json poses (see the module docstring); default the training frames' poses.
        light: (3,) light position, camera coordinates, meters; default the fitted one.
        size: longest image side in pixels; default the fitting resolution.
        frame: the frame of the poses (``poses_file``'s or the training ones) that ``orbit`` turns.
        batch: frames per renderer call.
        device: "cpu" or "cuda".
        progress: show a progress bar.

    Returns:
        {"frames", "width", "height", "seconds", "first_call_seconds", "fps", "device", "batch", "out"};
        fps leaves out the first call (kernel loading) when there are more.
    """
    from harp_kaolin.avatar import load_avatar
    from harp_kaolin.io import to_uint8, write_png, write_video

    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    avatar = load_avatar(avatar_dir, device)
    hand, params = avatar.hand, avatar.params
    poses = Poses(params.pose.detach(), params.global_orient.detach(), params.transl.detach())
    source = f"{Path(avatar_dir) / 'params.npz'} (training frames)"
    if poses_file is not None:
        poses, source = load_poses(poses_file, hand, poses.select([0])), str(poses_file)
    if orbit is not None:
        if not 0 <= frame < len(poses):
            raise ValueError(f"--frame {frame}: {source} has {len(poses)} frames (0 to {len(poses) - 1})")
        poses = orbit_poses(hand, params, poses.select([frame]), orbit)
    camera = render_camera(avatar.camera, size)
    renderer = make_renderer(avatar, camera, device)
    frames = render_poses(hand, params, renderer, poses, light, batch=batch, progress=progress)
    out_dir = Path(out_dir)
    pictures = [to_uint8(image) for image in frames.images]
    for t, picture in enumerate(pictures):
        write_png(out_dir / f"{t:06d}.png", picture)
    write_video(out_dir / "render.mp4", pictures, fps=avatar.config.fps)
    return {
        "frames": len(poses),
        "width": camera["width"],
        "height": camera["height"],
        "seconds": round(frames.seconds, 4),
        "first_call_seconds": round(frames.batch_seconds[0], 4),
        "fps": round(frames.fps, 2),
        "device": device,
        "batch": batch,
        "out": str(out_dir),
    }
