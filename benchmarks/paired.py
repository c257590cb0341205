"""Paired A/B of the render step between two checkouts or two process settings, in lockstep.

A separate run's step time moves by 15-30% with this kind of machine's state (two shared vCPUs), far
more than one optimization changes it, so comparing two runs made one after the other says little. Here
two worker processes, one per side, load the benchmark scene (``render.scene``) and take turns: the
parent asks side A for one forward + backward step, then side B, then B, then A, and so on (ABBA), so
that both sides see the same machine state. Only one side computes at a time. Each pair's ratio B / A
is kept; the median ratio is the estimate (a null comparison, the same checkout on both sides, gave a
median of 0.998 and quartiles of 0.98-1.04 over 40 pairs here).

A side is a checkout (``--a``, ``--b``: the folder holding ``harp_kaolin``, ``warp_kernels`` and
``benchmarks``; its code is imported first) plus environment settings (``--env-a``, ``--env-b``:
``NAME=VALUE``, for process-level settings such as ``GLIBC_TUNABLES`` that cannot change inside one
process).

    python benchmarks/paired.py --b ../other-checkout --json
    python benchmarks/paired.py --env-b GLIBC_TUNABLES=glibc.malloc.hugetlb=1 --steps 80
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(root: str, size: int, batch: int, backend: str, warmup: int) -> int:
    """One side: the scene and renderer of ``root``'s code, then one timed step per request line."""
    sys.path[:0] = [root, os.path.join(root, "benchmarks")]
    import render  # the side's own benchmark module (its scene and step)
    import torch  # noqa: F401  (after the path change: the side's code decides what it imports)
    import warp as wp

    wp.config.quiet = True
    wp.config.log_level = wp.LOG_WARNING
    from harp_kaolin.render import Renderer

    scene = render.scene(size, batch, "cpu")
    hand = scene["hand"]
    renderer = Renderer(scene["camera"], hand.faces, hand.face_uvs, hand.uvs, backend=backend)
    for _ in range(warmup):
        render.step(renderer, scene)
    import harp_kaolin
    import warp_kernels

    print("ready", harp_kaolin.__file__, warp_kernels.__file__, sep="\t", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        render.step(renderer, scene)
        print(f"{(time.perf_counter() - start) * 1000.0:.4f}", flush=True)
    return 0


def _environment(pairs: list[str], option: str) -> dict[str, str]:
    env = dict(os.environ)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"{option} {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def _side(root: Path, option: str) -> str:
    root = root.resolve()
    missing = [p for p in ("harp_kaolin", "warp_kernels", "benchmarks/render.py") if not (root / p).exists()]
    if missing:
        raise SystemExit(f"{option} {root}: not a harp-kaolin checkout (no {', '.join(missing)})")
    return str(root)


def _start(root: str, env: dict, args) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", root, "--backend", args.backend]
    command += ["--size", str(args.size), "--batch", str(args.batch), "--warmup", str(args.warmup)]
    return subprocess.Popen(
        command, env=env, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )


def _ask(proc: subprocess.Popen, name: str) -> float:
    proc.stdin.write("step\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"side {name}: the worker stopped (exit code {proc.wait()}); see its messages above")
    return float(line)


def compare(args) -> dict:
    sides = {"a": _side(args.a, "--a"), "b": _side(args.b, "--b")}
    envs = {"a": _environment(args.env_a, "--env-a"), "b": _environment(args.env_b, "--env-b")}
    procs = {name: _start(sides[name], envs[name], args) for name in "ab"}
    try:
        code = {}
        for name, proc in procs.items():
            ready, *files = proc.stdout.readline().rstrip("\n").split("\t")
            if ready != "ready":
                raise SystemExit(f"side {name}: the worker did not start (exit code {proc.wait()})")
            code[name] = [str(Path(f).parent) for f in files]  # the packages the side really imported
        times = {"a": [], "b": []}
        for k in range(args.steps):
            for name in ("a", "b") if k % 2 == 0 else ("b", "a"):
                times[name].append(_ask(procs[name], name))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()
    ratios = [b / a for a, b in zip(times["a"], times["b"])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "a": sides["a"],
        "b": sides["b"],
        "a_code": code["a"],
        "b_code": code["b"],
        "env_a": args.env_a,
        "env_b": args.env_b,
        "backend": args.backend,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "a_ms": round(statistics.median(times["a"]), 2),
        "b_ms": round(statistics.median(times["b"]), 2),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_mean": round(statistics.mean(ratios), 4),
        "ratio_quartiles": [round(q, 4) for q in (quartiles[0], quartiles[2])],
        "a_runs_ms": [round(t, 2) for t in times["a"]],
        "b_runs_ms": [round(t, 2) for t in times["b"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, default=ROOT, help="checkout of side A (default: this one)")
    parser.add_argument("--b", type=Path, default=ROOT, help="checkout of side B (default: this one)")
    for side in "ab":
        option, text = f"--env-{side}", f"process setting of side {side.upper()} (repeatable)"
        parser.add_argument(option, action="append", default=[], metavar="NAME=VALUE", help=text)
    parser.add_argument("--steps", type=int, default=60, help="pairs of timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--size", type=int, default=448, help="image width and height, pixels")
    parser.add_argument("--batch", type=int, default=8, help="frames per call")
    parser.add_argument("--backend", choices=("warp", "torch"), default="warp")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.size, args.batch, args.steps) < 1 or args.warmup < 0:
        parser.error("--size, --batch and --steps must be >= 1, --warmup >= 0")
    if args.worker:
        return worker(args.worker, args.size, args.batch, args.backend, args.warmup)
    result = compare(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"A {result['a']} {' '.join(args.env_a)}: {result['a_ms']:.1f} ms per step (median)")
        print(f"B {result['b']} {' '.join(args.env_b)}: {result['b_ms']:.1f} ms per step (median)")
        q = result["ratio_quartiles"]
        median = result["ratio"]
        print(f"B / A per pair: median {median:.4f} (quartiles {q[0]:.4f}-{q[1]:.4f}), {args.steps} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
