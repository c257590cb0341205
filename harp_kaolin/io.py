"""Atomic file writes and image helpers: nothing half-written survives an interruption."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path: str | Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write_bytes(path, buf.getvalue())


def to_uint8(image) -> np.ndarray:
    """(H, W, C) float in [0, 1] (numpy or torch) -> uint8."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: str | Path, image) -> None:
    """Write an (H, W, 3) or (H, W) float [0, 1] or uint8 image as PNG, atomically."""
    from PIL import Image

    arr = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    _atomic_write_bytes(path, buf.getvalue())


def read_png(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 30.0) -> None:
    """Write uint8 (H, W, 3) RGB frames as an mp4 (mp4v codec)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write mp4 files here")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)
