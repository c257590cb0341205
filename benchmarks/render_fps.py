"""Frames per second of ``harp render``'s render path (hand forward + renderer forward, no gradients).

Times ``harp_kaolin.novel.render_poses``, the function ``harp render`` calls, on turntable views
(``--frames`` views of one pose, as ``harp render --orbit``) at ``--size`` px. The avatar is
``--avatar DIR`` (a folder written by ``harp fit``) or, by default, a built-in one: the once-subdivided
anny hand with HARP's 512 x 512 albedo and normal map, a point light with shadows, about 0.5 m in front
of a camera with fx = 1.4 * size. Reported: the median over ``--repeats`` runs after ``--warmup``.

On a CPU shared with other jobs, torch's default of one thread per core can slow the render path
ten times over (threads wait for a busy core); ``--threads 1`` then gives the steady number.

    python benchmarks/render_fps.py --size 448 --json
    python benchmarks/render_fps.py --size 448 --threads 1 --avatar AVATAR
    python benchmarks/render_fps.py --size 448 --device cuda --batch 8 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from timing import device_name

TEXTURE_SIZE = 512  # HARP's albedo and normal map resolution


def builtin_avatar(size: int, device: str, backend: str, shadows: bool):
    """An in-memory ``Avatar``: anny hand (subdivide 1), synthetic albedo, light and one training pose."""
    from harp_kaolin.avatar import Avatar
    from harp_kaolin.config import FitConfig
    from harp_kaolin.fit.params import AvatarParams
    from harp_kaolin.hand import load_hand
    from harp_kaolin.synth import LIGHT, synth_poses, texture_image

    hand = load_hand("anny", subdivide=1)
    pose, rot, trans = synth_poses(hand, 2, seed=0)
    params = AvatarParams(1, hand.num_pose, hand.num_shape, hand.num_vertices, TEXTURE_SIZE)
    with torch.no_grad():
        params.pose.copy_(pose[1:])
        params.global_orient.copy_(rot[1:])
        params.transl.copy_(trans[1:])
        params.albedo.copy_(texture_image(TEXTURE_SIZE))
        params.light.copy_(torch.tensor(LIGHT["position"]))
        params.ambient.fill_(float(torch.logit(torch.tensor(LIGHT["ambient"]))))
    camera = {
        "width": size,
        "height": size,
        "fx": 1.4 * size,
        "fy": 1.4 * size,
        "cx": size / 2,
        "cy": size / 2,
    }
    cfg = FitConfig(subdivide=1, texture_size=TEXTURE_SIZE, backend=backend, shadows=shadows, device=device)
    return Avatar(Path("<built-in>"), cfg, hand.to(device), params.to(device), ["000000.png"], camera)


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    from harp_kaolin.avatar import load_avatar
    from harp_kaolin.novel import Poses, make_renderer, orbit_poses, render_camera, render_poses

    if args.avatar is None:
        avatar = builtin_avatar(args.size, args.device, args.backend or "warp", not args.no_shadows)
    else:
        avatar = load_avatar(args.avatar, args.device)
        overrides = {"shadows": False} if args.no_shadows else {}
        if args.backend:
            overrides["backend"] = args.backend
        avatar = dataclasses.replace(avatar, config=dataclasses.replace(avatar.config, **overrides))
    hand, params = avatar.hand, avatar.params
    camera = render_camera(avatar.camera, args.size)
    renderer = make_renderer(avatar, camera, args.device)
    base = Poses(params.pose[:1].detach(), params.global_orient[:1].detach(), params.transl[:1].detach())
    poses = orbit_poses(hand, params, base, args.frames)
    for _ in range(args.warmup):
        render_poses(hand, params, renderer, poses, batch=args.batch)
    runs = [render_poses(hand, params, renderer, poses, batch=args.batch) for _ in range(args.repeats)]
    fps = statistics.median(r.fps for r in runs)
    covered = float((runs[-1].silhouettes >= 0.5).float().mean())
    return {
        "fps": round(fps, 2),
        "ms_per_frame": round(1000.0 / fps, 2),
        "device": args.device,
        "device_name": device_name(args.device),
        "size": args.size,
        "width": camera["width"],
        "height": camera["height"],
        "batch": args.batch,
        "frames": args.frames,
        "repeats": args.repeats,
        "runs_fps": [round(r.fps, 2) for r in runs],
        "backend": avatar.config.backend,
        "shadows": avatar.config.shadows,
        "avatar": str(avatar.folder),
        "vertices": hand.num_vertices,
        "faces": int(hand.faces.shape[0]),
        "texture_size": int(params.albedo.shape[-1]),
        "covered_fraction": round(covered, 4),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448, help="longest image side, pixels")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--avatar", type=Path, default=None, help="avatar folder (default: built-in avatar)")
    parser.add_argument("--frames", type=int, default=8, help="turntable views per run")
    parser.add_argument("--batch", type=int, default=1, help="frames per renderer call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (kernel loading, caches)")
    parser.add_argument("--backend", choices=("warp", "torch", "kaolin"), default=None, help="default: warp")
    parser.add_argument("--no-shadows", action="store_true", help="V = 1 (no shadow map)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default torch's; 1 on a busy machine)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if min(args.size, args.frames, args.batch, args.repeats, args.threads or 1) < 1 or args.warmup < 0:
        parser.error("--size, --frames, --batch, --repeats and --threads must be >= 1, --warmup >= 0")

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # oversubscribed cores slow torch's CPU kernels many times over
    import warp as wp

    wp.config.log_level = wp.LOG_WARNING  # keep stdout to the result
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"harp render path, {result['width']}x{result['height']}, batch {args.batch}, {args.device} "
            f"({result['backend']}, shadows {result['shadows']}): {result['fps']:.2f} frames per second, "
            f"{result['ms_per_frame']:.1f} ms per frame"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
