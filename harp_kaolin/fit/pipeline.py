"""``fit_sequence``: sequence folder -> avatar folder (DESIGN.md "Avatar folder")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from harp_kaolin.config import FitConfig, save_config
from harp_kaolin.fit.data import prepare
from harp_kaolin.fit.init import InitResult, initialize
from harp_kaolin.fit.params import AvatarParams
from harp_kaolin.fit.trainer import CHECKPOINT, Fitter
from harp_kaolin.io import atomic_savez, atomic_write_text, to_uint8, write_png, write_video


def load_hand_for(cfg: FitConfig):
    from harp_kaolin.hand import load_hand

    return load_hand(cfg.hand, subdivide=cfg.subdivide, **cfg.hand_options)


def fit_sequence(
    seq_path: str | Path, out_dir: str | Path, cfg: FitConfig, resume: bool = False, progress: bool = True
) -> dict:
    """Fit an avatar to a sequence and write the avatar folder. Returns the metrics dict."""
    from harp_kaolin.data import load_sequence

    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    seq = load_sequence(seq_path)
    data = prepare(seq, cfg.image_size)
    hand = load_hand_for(cfg)
    ckpt_path = out_dir / "checkpoints" / CHECKPOINT
    seconds: dict[str, float] = {}
    if resume and ckpt_path.is_file():
        init = InitResult(**torch.load(ckpt_path, map_location="cpu", weights_only=False)["init"])
    else:
        if resume:
            print(f"no checkpoint at {ckpt_path}; starting from the beginning")
            resume = False
        start = time.perf_counter()
        init = initialize(hand, data.keypoints3d, data.keypoints2d, data.camera, cfg.init)
        seconds["init"] = time.perf_counter() - start
        res = init.residual * 1000
        ok = torch.isfinite(res)
        worst = int(torch.where(ok, res, torch.zeros_like(res)).argmax())
        print(
            f"initialization: keypoint residual mean {res[ok].mean():.1f} mm, max {res[worst]:.1f} mm "
            f"(frame {data.names[worst]}); {int((~ok).sum())} frame(s) without keypoints interpolated"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    fitter = Fitter(hand, data, cfg, init, out_dir)
    state = fitter.run(resume=resume, progress=progress)
    seconds.update(state.seconds)
    return write_avatar(out_dir, fitter, seq_path, seconds, init)


def render_all(fitter: Fitter, batch: int = 8):
    """Render every training frame with the fitted parameters: (images, silhouettes) on the CPU."""
    p, images, sils = fitter.params, [], []
    with torch.no_grad():
        for s in range(0, fitter.num_frames, batch):
            idx = torch.arange(s, min(s + batch, fitter.num_frames), device=fitter.device)
            out = fitter.hand(p.pose[idx], p.shape, p.global_orient[idx], p.transl[idx], p.displacement)
            r = fitter.renderer(out.vertices, p.albedo_image(), p.normal_vectors(), p.light, p.ambient)
            images.append(r.image.cpu())
            sils.append(r.silhouette.cpu())
    return torch.cat(images), torch.cat(sils)


def save_params(path: Path, params: AvatarParams, names: list[str], camera: dict, cfg: FitConfig) -> None:
    arrays = params.to_numpy()
    atomic_savez(
        path,
        **arrays,
        model=np.array(cfg.hand),
        subdivide=np.array(cfg.subdivide),
        names=np.array(names),
        camera=np.array(json.dumps(camera)),
        fps=np.array(cfg.fps),
    )


def preview_strip(image, render, mask=None) -> np.ndarray:
    """input | render | overlay (50 % blend, silhouette outline in green) as one uint8 image."""
    import cv2

    a, b = to_uint8(image), to_uint8(render)
    overlay = ((a.astype(np.float32) + b.astype(np.float32)) / 2).astype(np.uint8)
    if mask is not None:
        m = (np.asarray(mask) > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (0, 200, 0), 1)
    return np.concatenate([a, b, overlay], axis=1)


def write_avatar(out_dir: Path, fitter: Fitter, seq_path, seconds: dict, init: InitResult) -> dict:
    """params.npz, textures/, metrics.json and renders/ of the avatar folder."""
    from harp_kaolin.evaluate import training_metrics

    hand, params, data, cfg = fitter.hand, fitter.params, fitter.data, fitter.cfg
    save_params(out_dir / "params.npz", params, data.names, data.camera, cfg)
    with torch.no_grad():
        write_png(out_dir / "textures" / "albedo.png", params.albedo_image()[0].permute(1, 2, 0).cpu())
        write_png(out_dir / "textures" / "normal.png", params.normal_image()[0].permute(1, 2, 0).cpu())
    images, sils = render_all(fitter)
    metrics = training_metrics(images, sils, data, hand, params, seq_path, fitter.perceptual_mode)
    metrics["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    res = (init.residual * 1000).tolist()
    metrics["init_residual_mm_per_frame"] = [None if r != r else round(r, 3) for r in res]  # r != r: NaN
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    strips = []
    for t, name in enumerate(data.names):
        strip = preview_strip(data.images[t], images[t], sils[t])
        write_png(out_dir / "renders" / f"{Path(name).stem}.png", strip)
        strips.append(strip)
    write_video(out_dir / "renders" / "fit.mp4", strips, fps=cfg.fps)
    return metrics
