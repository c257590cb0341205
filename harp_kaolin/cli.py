"""The ``harp`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from harp_kaolin.hand import load_hand

    options = {"model_path": args.model_path} if args.model_path else {}
    hand = load_hand(args.hand, subdivide=args.subdivide, **options)
    facts = hand.facts()
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            if not isinstance(value, list):
                print(f"{key:>24}: {value}")
        print(f"{'joints':>24}: {', '.join(facts['joint_names'])}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from harp_kaolin.data import check_sequence

    summary, problems = check_sequence(args.sequence)
    if args.json:
        print(json.dumps({"summary": summary, "problems": problems}, indent=1))
    else:
        cov = summary.get("mask_coverage") or {}
        print(f"sequence:  {args.sequence}")
        print(f"frames:    {summary.get('frames', 0)}")
        if summary.get("width"):
            print(f"size:      {summary['width']}x{summary['height']}")
        if cov.get("median") is not None:
            print(
                f"mask coverage: min {100 * cov['min']:.1f}%  median {100 * cov['median']:.1f}%"
                f"  max {100 * cov['max']:.1f}%"
            )
        print(
            f"keypoints: 3D in {summary.get('keypoints3d_frames', 0)} frames, "
            f"2D in {summary.get('keypoints2d_frames', 0)} frames"
        )
        if problems:
            print(f"\n{len(problems)} problem(s):", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print("ok")
    return 1 if problems else 0


def _cmd_import_video(args: argparse.Namespace) -> int:
    from harp_kaolin.data.video import import_video

    n = import_video(
        args.video, args.masks, args.camera, args.out, every=args.every, max_frames=args.max_frames
    )
    print(f"wrote {n} frames to {args.out}; keypoints.json is not written (add one for initialization)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from harp_kaolin.synth import synthesize

    out = synthesize(args.out, frames=args.frames, size=args.size, seed=args.seed, noise_mm=args.noise_mm)
    print(f"wrote a synthetic sequence of {args.frames} frames ({args.size}x{args.size}) to {out}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from harp_kaolin.metrics import METRIC_KEYS

    for k in METRIC_KEYS:
        if metrics.get(k) is not None:
            print(f"  {k:>22}: {metrics[k]:.4f}")
    if metrics.get("lpips") is None and metrics.get("lpips_note"):
        print(f"  {'lpips':>22}: n/a ({metrics['lpips_note']})")
    print(f"  {'perceptual_loss':>22}: {metrics.get('perceptual_loss')}")


def _cmd_fit(args: argparse.Namespace) -> int:
    from harp_kaolin.config import load_config
    from harp_kaolin.fit.pipeline import fit_sequence

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    metrics = fit_sequence(args.sequence, args.out, cfg, resume=args.resume)
    print(f"avatar written to {args.out} (training-frame metrics):")
    _print_metrics(metrics)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from harp_kaolin.config import load_config
    from harp_kaolin.fit.pipeline import fit_sequence
    from harp_kaolin.synth import synthesize

    start = time.perf_counter()
    out = Path(args.out)
    seq = out / "sequence"
    cfg = load_config("demo", args.overrides)
    if not seq.exists():
        synthesize(seq, frames=args.frames, size=args.size, seed=cfg.seed)
    avatar = out / "avatar"
    metrics = fit_sequence(seq, avatar, cfg, resume=args.resume)
    exported = _export_default(avatar)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  synthetic sequence: {seq}")
    print(f"  avatar folder:      {avatar}")
    print(f"  previews:           {avatar / 'renders'} (input | render | overlay, fit.mp4)")
    for path in exported:
        print(f"  exported:           {path}")
    print("training-frame metrics:")
    _print_metrics(metrics)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from usd_export import cli_export

    path = cli_export(args.avatar, args.format, args.out)
    print(f"wrote {path}")
    return 0


def _export_default(avatar: Path) -> list[Path]:
    """USD export of a fitted avatar folder (avatar.usda + avatar.usdz)."""
    from usd_export import export_avatar_folder

    return [export_avatar_folder(avatar, fmt) for fmt in ("usda", "usdz")]


def _pick_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    return name


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from harp_kaolin.evaluate import evaluate_avatar

    out = args.out or args.avatar / "evaluation" / args.sequence.name
    metrics = evaluate_avatar(
        args.avatar, args.sequence, out, args.mode, args.epochs, _pick_device(args.device), args.resume
    )
    if metrics["mode"] == "train":
        print(f"{args.sequence}: the avatar's training frames, rendered with the fitted parameters")
    else:
        print(f"{args.sequence}: new frames; pose-only fit to the masks (shape and appearance frozen)")
        print(f"  {'iou_init':>22}: {metrics['iou_init']:.4f}  (before the pose fit)")
        if metrics.get("keypoint_error_mm_init") is not None:
            print(f"  {'keypoint_error_mm_init':>22}: {metrics['keypoint_error_mm_init']:.4f}")
    _print_metrics(metrics)
    print(f"metrics and previews written to {out} (metrics.json, renders/)")
    return 0


def _cmd_refine_pose(args: argparse.Namespace) -> int:
    from harp_kaolin.posefit import refine_poses

    out = args.out or args.avatar / "refine" / args.sequence.name
    m = refine_poses(args.avatar, args.sequence, out, args.epochs, _pick_device(args.device), args.resume)
    print(f"refined poses of {args.sequence} written to {out / 'keypoints.json'} and {out / 'poses.npz'}")
    print(f"  {'iou':>26}: {m['iou_init']:.4f} -> {m['iou']:.4f}")
    if m.get("keypoint_error_mm") is not None:
        for key in ("keypoint_error_mm", "pa_keypoint_error_mm"):
            before = f"input {m[key + '_input']:.2f}, " if m.get(key + "_input") is not None else ""
            print(f"  {key:>26}: {before}initialization {m[key + '_init']:.2f} -> refined {m[key]:.2f}")
    else:
        print("  (no gt/keypoints.json in the sequence: keypoint error not measured)")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from harp_kaolin.novel import parse_light, render_novel

    light = parse_light(args.light) if args.light else None
    device = _pick_device(args.device)
    r = render_novel(
        args.avatar, args.out, args.orbit, args.poses, light, args.size, args.frame, args.batch, device
    )
    print(f"wrote {r['frames']} frames ({r['width']}x{r['height']}) and render.mp4 to {r['out']}")
    ms, batch = 1000 / r["fps"], r["batch"]
    print(f"render path: {r['fps']:.2f} frames per second ({ms:.1f} ms per frame, {device}, batch {batch})")
    if r["frames"] > batch:
        print(f"  (the first call, {r['first_call_seconds']:.2f} s with kernel loading, is left out)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harp", description="HARP personalized hand avatars from a monocular RGB video."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print the facts of a hand model")
    p.add_argument("--hand", default="anny", help="anny (default), anny_arm or mano")
    p.add_argument("--subdivide", type=int, default=1, help="levels of midpoint subdivision")
    p.add_argument("--model-path", help="MANO_RIGHT.pkl / .npz for --hand mano")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("check", help="check a sequence folder; exit 1 listing the problems")
    p.add_argument("sequence", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("import-video", help="convert a video + mask video to a sequence folder")
    p.add_argument("video", type=Path)
    p.add_argument("--masks", type=Path, required=True, help="video of the foreground masks")
    p.add_argument("--camera", type=Path, required=True, help="camera.json with width,height,fx,fy,cx,cy")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--max-frames", type=int, default=None)
    p.set_defaults(func=_cmd_import_video)

    p = sub.add_parser("synth", help="render a synthetic sequence with ground truth")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-mm", type=float, default=3.0, help="std of the keypoint noise for initialization")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("fit", help="fit an avatar to a sequence folder")
    p.add_argument("sequence", type=Path)
    p.add_argument("--out", type=Path, required=True, help="avatar folder")
    p.add_argument("--config", default="harp", help="preset name in configs/ (harp, demo) or a YAML path")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--resume", action="store_true", help="continue from the avatar folder's checkpoint")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. stages.0.epochs=5")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("export", help="export an avatar folder as USD (usda, usdc, usdz) or glb")
    p.add_argument("avatar", type=Path, help="avatar folder written by harp fit")
    p.add_argument(
        "--format",
        choices=["usda", "usdc", "usdz", "glb"],
        default=None,
        help="default: from --out's extension, else usda",
    )
    p.add_argument("--out", type=Path, default=None, help="default: AVATAR/avatar.FORMAT")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="synthesize a sequence, fit it with configs/demo.yaml, export USD")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--resume", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="metrics of an avatar on its training sequence or on a new one")
    p.add_argument("avatar", type=Path, help="avatar folder written by harp fit")
    p.add_argument("sequence", type=Path, help="the training sequence or a new one of the same hand")
    p.add_argument("--out", type=Path, default=None, help="default: AVATAR/evaluation/SEQ_NAME")
    p.add_argument(
        "--mode",
        choices=["auto", "train", "test"],
        default="auto",
        help="train: SEQ is the training sequence; test: fit poses first; auto: train when frame names match",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs of the pose-only fit (default 50)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pose fit")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "refine-pose", help="refine the poses of a new sequence of the same hand with the frozen avatar"
    )
    p.add_argument("avatar", type=Path, help="avatar folder written by harp fit")
    p.add_argument("sequence", type=Path, help="sequence folder with keypoints.json for initialization")
    p.add_argument("--out", type=Path, default=None, help="default: AVATAR/refine/SEQ_NAME")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the pose fit (default 50)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue an interrupted refinement")
    p.set_defaults(func=_cmd_refine_pose)

    p = sub.add_parser("render", help="render novel views, novel poses or new lighting of an avatar")
    p.add_argument("avatar", type=Path, help="avatar folder written by harp fit")
    p.add_argument("--out", type=Path, required=True, help="folder for 000000.png ... and render.mp4")
    p.add_argument("--orbit", type=int, default=None, help="N turntable views of one frame (see --frame)")
    p.add_argument(
        "--poses",
        type=Path,
        default=None,
        help="poses .npz/.json with pose (T,P,3) [global_orient (T,3), transl (T,3)], e.g. a params.npz",
    )
    p.add_argument(
        "--light", default=None, help="light position x,y,z, camera coordinates, meters (--light=-x,y,z)"
    )
    p.add_argument("--size", type=int, default=None, help="longest image side (default: the fitting size)")
    p.add_argument(
        "--frame", type=int, default=0, help="frame (of --poses or the training frames) to --orbit"
    )
    p.add_argument("--batch", type=int, default=1, help="frames per renderer call")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.set_defaults(func=_cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may follow options: argparse leaves those to parse_known_args' extras.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as exc:
        # RuntimeError covers FitError (e.g. a checkpoint that cannot be resumed) and backend errors.
        print(f"harp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
