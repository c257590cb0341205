"""The sequence folder of DESIGN.md: frames, masks, camera and optional keypoints.

Every problem found is reported with the file (and frame) it concerns and what is wrong; ``check``
collects all problems before failing so that a user can fix them in one pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

KEYPOINT_ORDER = "harp21"
NUM_KEYPOINTS = 21
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CAMERA_FIELDS = ("width", "height", "fx", "fy", "cx", "cy")
# A mask pixel strictly between these values is "grey"; a few percent come from anti-aliased edges.
GREY_LOW, GREY_HIGH, MAX_GREY_FRACTION = 16, 239, 0.02


class SequenceError(ValueError):
    """A sequence folder failed its checks; ``problems`` lists every problem found."""

    def __init__(self, root: Path, problems: list[str]):
        self.root = Path(root)
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"sequence {root} has {len(problems)} problem(s):\n{listing}")


@dataclass(frozen=True)
class Sequence:
    """A loaded sequence.

    Attributes:
        root: the sequence folder.
        names: T frame file names (without folder), sorted.
        images: (T, H, W, 3) float32 RGB in [0, 1].
        masks: (T, H, W) float32, 1 = hand.
        camera: dict with width, height, fx, fy, cx, cy.
        keypoints3d: (T, 21, 3) camera coordinates in meters, NaN where a frame has none; or None.
        keypoints2d: (T, 21, 3) (u, v, confidence) in pixels, NaN where a frame has none; or None.
    """

    root: Path
    names: list[str]
    images: Tensor
    masks: Tensor
    camera: dict
    keypoints3d: Tensor | None
    keypoints2d: Tensor | None

    @property
    def num_frames(self) -> int:
        return len(self.names)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[1]), int(self.images.shape[2])


def _frame_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _read_image(path: Path, mode: str) -> np.ndarray:
    """Read an image fully (so truncated files fail here) as uint8 in PIL ``mode`` ("RGB" or "L")."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if mode == "L" and img.mode in ("RGB", "RGBA"):
            arr = np.asarray(img.convert("RGB"))
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise ValueError("mask is a colour image (channels differ); expected grey values")
            return arr[..., 0].copy()
        return np.asarray(img.convert(mode)).copy()


def read_camera(path: Path, problems: list[str] | None = None) -> dict | None:
    """Read and check camera.json. Appends problems (or raises SequenceError when ``problems`` is None)."""
    own = problems is None
    problems = [] if own else problems
    cam = None
    if not path.is_file():
        problems.append(f"{path}: missing (needs {{{', '.join(CAMERA_FIELDS)}}} in pixels)")
    else:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not valid JSON ({exc})")
            data = None
        if data is not None and not isinstance(data, dict):
            problems.append(f"{path}: expected a JSON object with {', '.join(CAMERA_FIELDS)}")
        elif data is not None:
            cam = {}
            for key in CAMERA_FIELDS:
                value = data.get(key)
                if value is None:
                    problems.append(f"{path}: missing field '{key}'")
                elif (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                ):
                    problems.append(f"{path}: field '{key}' must be a finite number, got {value!r}")
                elif key in ("width", "height", "fx", "fy") and value <= 0:
                    problems.append(f"{path}: field '{key}' must be positive, got {value}")
                elif key in ("width", "height") and int(value) != value:
                    problems.append(f"{path}: field '{key}' must be an integer, got {value}")
                else:
                    cam[key] = int(value) if key in ("width", "height") else float(value)
            if len(cam) != len(CAMERA_FIELDS):
                cam = None
    if own and problems:
        raise SequenceError(path.parent, problems)
    return cam


def _check_points(value, width: int, label: str, problems: list[str]) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"{label}: not a numeric array")
        return None
    if arr.shape != (NUM_KEYPOINTS, width):
        problems.append(f"{label}: expected {NUM_KEYPOINTS} x {width} values, got shape {list(arr.shape)}")
        return None
    if not np.isfinite(arr).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(arr))[:, 0]})
        problems.append(f"{label}: NaN or inf values at keypoints {bad}")
        return None
    return arr


def read_keypoints(path: Path, num_frames: int | None, problems: list[str] | None = None):
    """Read and check keypoints.json ("harp21" order).

    Returns:
        (keypoints3d, keypoints2d): each (T, 21, 3) float32 tensors with NaN for frames without them,
        or None when no frame has them.
    """
    own = problems is None
    problems = [] if own else problems
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: not valid JSON ({exc})")
        data = None
    result = (None, None)
    if isinstance(data, dict):
        order = data.get("order")
        frames = data.get("frames")
        if order != KEYPOINT_ORDER:
            problems.append(f"{path}: 'order' must be \"{KEYPOINT_ORDER}\", got {order!r}")
        if not isinstance(frames, list):
            problems.append(f"{path}: 'frames' must be a list with one entry per frame")
        else:
            if num_frames is not None and len(frames) != num_frames:
                problems.append(
                    f"{path}: has {len(frames)} frame entries but the sequence has {num_frames} frames"
                )
            k3 = np.full((len(frames), NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
            k2 = np.full((len(frames), NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
            for i, fr in enumerate(frames):
                if not isinstance(fr, dict):
                    problems.append(f"{path}: frame {i}: expected an object with keypoints3d/keypoints2d")
                    continue
                p3 = _check_points(fr.get("keypoints3d"), 3, f"{path}: frame {i}: keypoints3d", problems)
                p2 = _check_points(fr.get("keypoints2d"), 3, f"{path}: frame {i}: keypoints2d", problems)
                if p3 is not None:
                    k3[i] = p3
                if p2 is not None:
                    k2[i] = p2
            has3 = bool(np.isfinite(k3).all(axis=(1, 2)).any())
            has2 = bool(np.isfinite(k2).all(axis=(1, 2)).any())
            result = (torch.from_numpy(k3) if has3 else None, torch.from_numpy(k2) if has2 else None)
    elif data is not None:
        problems.append(f"{path}: expected a JSON object with 'order' and 'frames'")
    if own and problems:
        raise SequenceError(path.parent, problems)
    return result


def _scan(root: Path, problems: list[str], load: bool):
    """Walk the folder; returns (names, images, masks, camera, k3, k2, stats)."""
    images_dir, masks_dir = root / "images", root / "masks"
    if not root.is_dir():
        problems.append(f"{root}: sequence folder does not exist")
        return None
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            problems.append(f"{d}: missing folder")
    camera = read_camera(root / "camera.json", problems)
    if problems and not (images_dir.is_dir() and masks_dir.is_dir()):
        return None
    imgs, msks = _frame_files(images_dir), _frame_files(masks_dir)
    if not imgs:
        problems.append(f"{images_dir}: no frames (expected 000000.png, 000001.png, ...)")
    for stem in sorted(set(imgs) - set(msks)):
        problems.append(f"{masks_dir}: missing mask for frame {imgs[stem].name} (expected {stem}.png)")
    for stem in sorted(set(msks) - set(imgs)):
        problems.append(f"{msks[stem]}: extra mask with no matching frame in images/")
    names = sorted(set(imgs) & set(msks))
    size = (camera["height"], camera["width"]) if camera else None
    images, masks, coverage = [], [], []
    for stem in names:
        ipath, mpath = imgs[stem], msks[stem]
        try:
            img = _read_image(ipath, "RGB")
        except Exception as exc:  # PIL raises several types for unreadable/truncated files
            problems.append(f"{ipath}: unreadable or truncated image ({exc})")
            img = None
        try:
            msk = _read_image(mpath, "L")
        except Exception as exc:
            problems.append(f"{mpath}: unreadable or truncated mask ({exc})")
            msk = None
        if img is not None:
            if size is None:
                size = img.shape[:2]
            if img.shape[:2] != tuple(size):
                problems.append(
                    f"{ipath}: size {img.shape[1]}x{img.shape[0]} differs from "
                    f"{size[1]}x{size[0]} (camera.json / first frame)"
                )
                img = None
        if msk is not None:
            if size is not None and msk.shape != tuple(size):
                problems.append(
                    f"{mpath}: size {msk.shape[1]}x{msk.shape[0]} differs from {size[1]}x{size[0]}"
                )
                msk = None
            else:
                fg = msk > 127
                grey = ((msk > GREY_LOW) & (msk < GREY_HIGH)).mean()
                if not fg.any():
                    problems.append(f"{mpath}: empty mask (no pixel > 127)")
                elif grey > MAX_GREY_FRACTION:
                    problems.append(
                        f"{mpath}: not a binary mask ({100 * grey:.1f}% of pixels are grey, between "
                        f"{GREY_LOW} and {GREY_HIGH}; expected 0 = background, 255 = hand)"
                    )
                coverage.append(float(fg.mean()))
        if load and img is not None and msk is not None:
            images.append(img)
            masks.append(msk > 127)
    k3 = k2 = None
    kp_path = root / "keypoints.json"
    if kp_path.is_file():
        k3, k2 = read_keypoints(kp_path, len(imgs) if imgs else None, problems)
    stats = {
        "frames": len(names),
        "height": size[0] if size else None,
        "width": size[1] if size else None,
        "mask_coverage": {
            "min": float(np.min(coverage)) if coverage else None,
            "median": float(np.median(coverage)) if coverage else None,
            "max": float(np.max(coverage)) if coverage else None,
        },
        "keypoints3d_frames": int(torch.isfinite(k3).all(-1).all(-1).sum()) if k3 is not None else 0,
        "keypoints2d_frames": int(torch.isfinite(k2).all(-1).all(-1).sum()) if k2 is not None else 0,
    }
    return [imgs[s].name for s in names], images, masks, camera, k3, k2, stats


def check_sequence(root: str | Path) -> tuple[dict, list[str]]:
    """Check a sequence folder without keeping the images.

    Returns:
        (summary, problems): summary has frames, height, width, mask_coverage {min, median, max} and the
        number of frames with 3D / 2D keypoints; problems is empty when the sequence is usable.
    """
    problems: list[str] = []
    scanned = _scan(Path(root), problems, load=False)
    return (scanned[-1] if scanned else {"frames": 0}), problems


def load_sequence(root: str | Path) -> Sequence:
    """Load and check a sequence; raises SequenceError listing every problem."""
    root = Path(root)
    problems: list[str] = []
    scanned = _scan(root, problems, load=True)
    if problems or scanned is None:
        raise SequenceError(root, problems)
    names, images, masks, camera, k3, k2, _ = scanned
    return Sequence(
        root=root,
        names=names,
        images=torch.from_numpy(np.stack(images)).float() / 255.0,
        masks=torch.from_numpy(np.stack(masks)).float(),
        camera=camera,
        keypoints3d=k3,
        keypoints2d=k2,
    )
