"""Conversion of a video file (and a mask video) to the sequence folder layout."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harp_kaolin.data.sequence import read_camera


def _frames(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video (unreadable file or unsupported codec)")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


def import_video(
    video: str | Path,
    masks: str | Path,
    camera: str | Path,
    out: str | Path,
    every: int = 1,
    max_frames: int | None = None,
) -> int:
    """Write ``images/``, ``masks/`` and ``camera.json`` of a sequence from a video and a mask video.

    The folder is written to a temporary sibling and renamed at the end, so an interrupted import leaves
    nothing half-written. Mask frames are thresholded at 127.

    Returns:
        the number of frames written.
    """
    import cv2

    video, masks, camera, out = Path(video), Path(masks), Path(camera), Path(out)
    for p in (video, masks):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    cam = read_camera(camera)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        count = 0
        pairs = zip(_frames(video), _frames(masks))
        for i, (frame, mask) in enumerate(tqdm(pairs, desc="import", unit="frame")):
            if i % every:
                continue
            h, w = frame.shape[:2]
            if (w, h) != (cam["width"], cam["height"]):
                raise ValueError(
                    f"{video}: frame {i} is {w}x{h} but {camera} says {cam['width']}x{cam['height']}"
                )
            if mask.shape[:2] != (h, w):
                raise ValueError(f"{masks}: frame {i} is {mask.shape[1]}x{mask.shape[0]}, video is {w}x{h}")
            grey = mask if mask.ndim == 2 else cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY)
            name = f"{count:06d}.png"
            cv2.imwrite(str(tmp / "images" / name), frame)
            cv2.imwrite(str(tmp / "masks" / name), np.where(grey > 127, 255, 0).astype(np.uint8))
            count += 1
            if max_frames is not None and count >= max_frames:
                break
        if count == 0:
            raise ValueError(f"{video}: no frames could be read")
        (tmp / "camera.json").write_text(json.dumps(cam, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count
