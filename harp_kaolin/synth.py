"""``harp synth``: a synthetic sequence rendered by this project's renderer, with ground truth.

The hand turns from palm to back about its long axis while a curl wave runs across the fingers; it
carries a procedural albedo (skin with a visible stripe-and-dot pattern on both sides) and is lit by one
point light with shadows. Keypoints for initialization are the true ones plus Gaussian noise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harp_kaolin.io import atomic_savez, write_png

SKIN = (0.62, 0.45, 0.36)
STRIPE = (0.22, 0.32, 0.55)
DOT = (0.70, 0.16, 0.16)
LIGHT = {"position": [0.22, -0.30, 0.12], "ambient": 0.35, "diffuse": 0.65}
# Model frame (fingers +y, palm -x) -> camera (fingers up in the image, palm towards the camera).
BASE_ROTATION = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])


def procedural_albedo(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(..., 3) albedo at UV coordinates (..., ) in this project's normalized layout (v up)."""
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * (u + 0.5 * v))
    stripes = np.clip((stripes - 0.55) * 4, 0, 1)[..., None]
    cu, cv = (u * 8) % 1 - 0.5, (v * 8) % 1 - 0.5
    dots = (np.hypot(cu, cv) < 0.18)[..., None].astype(np.float64)
    colour = np.asarray(SKIN) * (1 - stripes) + np.asarray(STRIPE) * stripes
    return colour * (1 - dots) + np.asarray(DOT) * dots


def texture_image(size: int) -> torch.Tensor:
    """(1, 3, size, size) albedo map; row 0 is v = 1."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1 - c)
    return torch.from_numpy(procedural_albedo(u, v)).permute(2, 0, 1)[None].float()


def original_layout_albedo(hand, size: int = 512) -> np.ndarray:
    """The same albedo in the hand model's original UV layout (what gt/albedo.png stores)."""
    c = (np.arange(size) + 0.5) / size
    u0, v0 = np.meshgrid(c, 1 - c)
    s, off = float(hand.uv_scale), hand.uv_offset.numpy()
    u, v = u0 * s + off[0], v0 * s + off[1]
    img = procedural_albedo(u, v)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    img[~inside] = SKIN
    return img


def synth_poses(hand, frames: int, seed: int = 0):
    """Per-frame pose (T, P, 3), global rotation vectors (T, 3) and translations (T, 3)."""
    import cv2

    rng = np.random.default_rng(seed)
    names = [hand.joint_names[j] for j in hand.pose_joints]
    pose = np.zeros((frames, len(names), 3))
    rot, trans = np.zeros((frames, 3)), np.zeros((frames, 3))
    for t in range(frames):
        s = t / max(1, frames - 1)
        phi = -math.pi * (0.5 - 0.5 * math.cos(math.pi * s))  # palm -> back, eased
        tilt = np.deg2rad(25 + 5 * math.sin(2 * math.pi * s))  # fingers up-left
        pitch = np.deg2rad(15)
        spin = cv2.Rodrigues(np.array([0.0, phi, 0.0]))[0]
        lean = cv2.Rodrigues(np.array([pitch, 0.0, tilt]))[0]
        r = lean @ BASE_ROTATION @ spin
        rot[t] = cv2.Rodrigues(r)[0][:, 0]
        for f in range(2, 6):
            wave = 0.5 + 0.5 * math.sin(2 * math.pi * (s * 1.5 - 0.15 * f))
            for k in range(1, 4):
                pose[t, names.index(f"finger{f}-{k}.R"), 2] = 0.55 * wave * (1.0 if k < 3 else 0.7)
            pose[t, names.index(f"finger{f}-1.R"), 0] = 0.08 * (f - 3.5) * (1 - s)  # spread closing
        for k in range(1, 4):
            pose[t, names.index(f"finger1-{k}.R"), 2] = 0.15 + 0.25 * s
        centre = np.array([0.01 * math.sin(2 * math.pi * s), 0.005, 0.48 + 0.03 * s])
        trans[t] = centre - r @ np.array([0.0, 0.08, 0.0])
    pose += rng.normal(0, 0.02, pose.shape)
    return (torch.from_numpy(pose).float(), torch.from_numpy(rot).float(), torch.from_numpy(trans).float())


def synthesize(
    out: str | Path,
    frames: int = 8,
    size: int = 128,
    seed: int = 0,
    hand_name: str = "anny",
    noise_mm: float = 3.0,
    texture_size: int = 256,
    backend: str = "warp",
) -> Path:
    """Render a synthetic sequence folder (DESIGN.md layout) with gt/; written atomically."""
    from harp_kaolin.hand import load_hand
    from harp_kaolin.render import Renderer

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another OUT or remove it")
    hand = load_hand(hand_name, subdivide=1)
    pose, rot, trans = synth_poses(hand, frames, seed)
    camera = {
        "width": size,
        "height": size,
        "fx": 2.0 * size,
        "fy": 2.0 * size,
        "cx": size / 2,
        "cy": size / 2,
    }
    albedo = texture_image(texture_size)
    normal = torch.zeros(1, 3, texture_size, texture_size)
    normal[:, 2] = 1
    light = torch.tensor(LIGHT["position"])
    ambient = torch.logit(torch.tensor([LIGHT["ambient"]]))
    renderer = Renderer(camera, hand.faces, hand.face_uvs, hand.uvs, backend=backend, shadows=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for d in ("images", "masks", "gt"):
            (tmp / d).mkdir()
        verts, kps = [], []
        with torch.no_grad():
            for t in tqdm(range(frames), desc="synth", unit="frame"):
                o = hand(pose[t : t + 1], None, rot[t : t + 1], trans[t : t + 1])
                r = renderer(o.vertices, albedo, normal, light, ambient)
                write_png(tmp / "images" / f"{t:06d}.png", r.image[0])
                write_png(tmp / "masks" / f"{t:06d}.png", (r.face_idx[0] >= 0).numpy().astype(np.uint8) * 255)
                verts.append(o.vertices[0].numpy())
                kps.append(o.keypoints[0].numpy())
        kps = np.stack(kps)
        rng = np.random.default_rng(seed + 1)
        noisy = kps + rng.normal(0, noise_mm / 1000, kps.shape)
        fx, cx, cy = camera["fx"], camera["cx"], camera["cy"]
        uv = np.stack([fx * noisy[..., 0] / noisy[..., 2] + cx, fx * noisy[..., 1] / noisy[..., 2] + cy], -1)
        k2 = np.concatenate([uv, np.ones_like(uv[..., :1])], -1)
        frames_json = [
            {"keypoints3d": noisy[t].tolist(), "keypoints2d": k2[t].tolist()} for t in range(frames)
        ]
        (tmp / "keypoints.json").write_text(json.dumps({"order": "harp21", "frames": frames_json}))
        (tmp / "camera.json").write_text(json.dumps(camera, indent=1))
        gt_frames = [{"keypoints3d": kps[t].tolist(), "keypoints2d": None} for t in range(frames)]
        (tmp / "gt" / "keypoints.json").write_text(json.dumps({"order": "harp21", "frames": gt_frames}))
        (tmp / "gt" / "light.json").write_text(json.dumps(LIGHT, indent=1))
        write_png(tmp / "gt" / "albedo.png", original_layout_albedo(hand))
        atomic_savez(
            tmp / "gt" / "params.npz",
            pose=pose.numpy(),
            global_orient=rot.numpy(),
            transl=trans.numpy(),
            shape=hand.default_shape(1).numpy(),
            model=np.array(hand_name),
        )
        atomic_savez(tmp / "gt" / "vertices.npz", vertices=np.stack(verts), faces=hand.faces.numpy())
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
