"""Time forward + backward of the full HARP render (texture, normal map, shadows) on the anny hand.

Renders the once-subdivided anny hand, posed and placed ~0.5 m in front of a ``--size`` px camera
(fx = 1.1 * size), with a 512 x 512 albedo and normal map and shadow-map visibility, then backpropagates
a fixed random upstream gradient of the image (``image.backward(weights)``, the gradient of
``sum(image * weights)`` without making that product) to the vertices, albedo, normal map and light.
The Warp backend and the pure-torch twins run in the same process after ``--warmup`` runs of each;
every torch run is bracketed by ``--bracket`` Warp runs on each side, so that machine load hits both
alike. Reported: the medians over the Warp runs (at least ``--repeats``) and the ``--torch-repeats`` torch
runs (ms per batch, forward + backward), their ratio ``speedup``, and ``speedup_paired``, the median over
the torch runs of each one's ratio to the mean of the Warp runs around it (``speedup_rounds``): the
estimate that the machine's drift in speed between runs moves least. A torch run takes about ten Warp
runs' time, so a round compares it with the mean of the ``2 * bracket`` Warp runs next to it (time
summed as in the torch run), not with two single runs. ``torch_before_warp_ms`` is one torch run timed
before the Warp backend first runs in the process: torch runs after Warp runs should not be slower than
it.

    python benchmarks/render.py --size 448 --batch 8 --json
    python benchmarks/render.py --size 448 --batch 8 --profile     # where the Warp backend's time goes
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from timing import device_name, sync, time_ms

BACKENDS = ("warp", "torch")
TEXTURE_SIZE = 512  # HARP's albedo and normal map resolution


def scene(size: int, batch: int, device: str, seed: int = 0) -> dict:
    """Posed anny hands ~0.5 m in front of the camera, textures, light and ambient."""
    from harp_kaolin.hand import load_hand

    hand = load_hand("anny", subdivide=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pose = 0.25 * torch.randn(batch, hand.num_pose, 3, generator=gen)
        # Back of the hand towards the camera (+x of anny's frame to -z), fingers up, slight tilts.
        orient = torch.tensor([0.0, math.pi / 2, 0.0]) + 0.2 * torch.randn(batch, 3, generator=gen)
        vertices = hand(pose, None, orient, torch.zeros(batch, 3)).vertices
        centre = (vertices.amin(1) + vertices.amax(1)) / 2
        vertices = vertices - centre[:, None] + torch.tensor([0.0, 0.0, 0.5])
    t = torch.linspace(0, 1, TEXTURE_SIZE)
    pattern = torch.sin(12 * t)[:, None] * torch.cos(9 * t)[None]  # (Ht, Wt) smooth skin-like variation
    albedo = torch.stack([0.6 + 0.2 * pattern, 0.45 + 0.1 * pattern, 0.4 + 0.05 * pattern])[None]
    tilt = 0.2 * torch.randn(1, 2, TEXTURE_SIZE, TEXTURE_SIZE, generator=gen)
    normal = torch.nn.functional.normalize(
        torch.cat([tilt, torch.ones(1, 1, TEXTURE_SIZE, TEXTURE_SIZE)], 1), dim=1
    )
    camera = {
        "width": size,
        "height": size,
        "fx": 1.1 * size,
        "fy": 1.1 * size,
        "cx": size / 2,
        "cy": size / 2,
    }
    return {
        "hand": hand,
        "camera": camera,
        "vertices": vertices.to(device),
        "albedo": albedo.contiguous().to(device),
        "normal": normal.to(device),
        "light": torch.tensor([0.15, -0.2, 0.1], device=device),
        "ambient": torch.tensor([-0.5], device=device),
        "weights": torch.rand(batch, size, size, 3, generator=gen).to(device),
    }


def step(renderer, s: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward; returns the image and the gradients."""
    # fresh leaves sharing the scene's storage (the renderer never writes its inputs): no copies timed
    leaves = {k: s[k].detach().requires_grad_(True) for k in ("vertices", "albedo", "normal", "light")}
    out = renderer(leaves["vertices"], leaves["albedo"], leaves["normal"], leaves["light"], s["ambient"])
    out.image.backward(s["weights"])
    return out.image.detach(), {k: v.grad for k, v in leaves.items()}


def _timed(fn, inputs: list, device: str) -> tuple[object, float, float]:
    """Forward of one stage from detached leaves, then backward of random weights of its outputs."""
    leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    sync(device)
    start = time.perf_counter()
    out = fn(*leaves)
    sync(device)
    forward = time.perf_counter() - start
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
    upstream = [torch.rand_like(o) for o in outs]  # not timed (for an image, longer than the step itself)
    sync(device)
    middle = time.perf_counter()
    torch.autograd.backward(outs, upstream)
    sync(device)
    return out, forward * 1000.0, (time.perf_counter() - middle) * 1000.0


STAGE_REPEATS = 5  # runs per step in --profile (medians): a single run also times first touches of memory


def stage_times(renderer, s: dict, device: str) -> dict[str, list[float]]:
    """[forward ms, backward ms] of each step of ``Renderer.forward`` (the backend's own path), run one by
    one from detached inputs, medians of ``STAGE_REPEATS`` runs. The Warp path runs the per-pixel steps
    (interpolate, shadow lookup, shade, composite) as one op: one "pixels" stage."""
    from harp_kaolin.render import renderer as R
    from harp_kaolin.render.shading import light_view, pcf_visibility, shadow_map

    r, v, b = renderer, s["vertices"], s["vertices"].shape[0]
    light, ambient = s["light"].expand(b, 3), s["ambient"].expand(b, 1)
    warp = r.backend == "warp"
    times = {}

    def stage(name, fn, *inputs):
        runs = [_timed(fn, list(inputs), device) for _ in range(STAGE_REPEATS)]
        times[name] = [round(statistics.median(r[k] for r in runs), 1) for k in (1, 2)]
        return runs[-1][0]

    frags = R.rasterize_mesh(r.camera, v, r.faces, r.backend)

    def rasterize(x):
        f = R.rasterize_mesh(r.camera, x, r.faces, r.backend)
        return f.barycentrics, f.soft_mask

    stage("rasterize", rasterize, v)
    topology = (r.faces, r.uvs, r.face_uvs, r.face_wedges, r.wedge_vertex)
    used = (frags.batch_index, frags.face) if warp else None  # as the Renderer: frames of these faces

    def frames(x):
        f = R.surface_frames(x, *topology, backend=r.backend, pixels=used)
        return f.normals, f.tangents

    normals, tangents = stage("surface_frames", frames, v)
    normals, tangents = normals.detach(), tangents.detach()
    shading_topology = (r.faces, r.uvs, r.face_uvs, r.face_wedges, r.signs)

    if warp:  # the Renderer's path: every per-pixel step in one op (warp_kernels.pipeline)
        from warp_kernels.pipeline import render_pixels

        shadow_inputs = []
        if r.shadows:
            view = light_view(v, light, r.shadow_size, backend=r.backend)
            depth_map = stage("shadow_map", lambda x: shadow_map(x, r.faces, view, r.backend), v)
            shadow_inputs = [depth_map.detach(), view.rotation, view.eye]

        def pixels(bary, x, n, t, albedo, normal_map, mask, *shadow):
            view_args = None
            if shadow:
                view_args = (*shadow, view.focal, view.size, r.shadow_sharpness, r.shadow_bias)
            out = render_pixels(
                bary, frags.batch_index, frags.face, frags.flat_index, x, n, t, r.faces, r.uvs, r.face_uvs,
                r.face_wedges, r.signs, albedo, normal_map, light, ambient, mask, 1.0, view_args,
            )  # fmt: skip
            return out[0]

        args = [frags.barycentrics, v, normals, tangents, s["albedo"], s["normal"], frags.soft_mask]
        stage("pixels", pixels, *args, *shadow_inputs)
        return times

    def fragments(w):
        return R.Fragments(
            w, frags.flat_index, frags.batch_index, frags.face, frags.soft_mask, frags.face_idx
        )

    def interpolate(x, w, n, t):
        q = R.interpolate_pixels(fragments(w), x, R.SurfaceFrames(n, t), *shading_topology)
        return q.position, q.uv, q.normal, q.tangent, q.bitangent

    attrs = stage("interpolate", interpolate, v, frags.barycentrics, normals, tangents)
    attrs = tuple(a.detach() for a in attrs)
    pixels = R.Pixels(frags.flat_index, frags.batch_index, *attrs)
    vis = None
    if r.shadows:
        view = light_view(v, light, r.shadow_size, backend=r.backend)
        depth_map = stage("shadow_map", lambda x: shadow_map(x, r.faces, view, r.backend), v)

        def lookup(m, q):
            coords, depth = view.project(q, pixels.batch_index)
            return pcf_visibility(
                m, coords, depth, pixels.batch_index, r.shadow_sharpness, r.shadow_bias, r.backend
            )

        vis = stage("shadow_lookup", lookup, depth_map, pixels.position).detach()

    def shade(albedo, normal_map, *values):
        q = R.Pixels(pixels.flat_index, pixels.batch_index, *values)
        return R.shade_pixels(q, albedo, normal_map, light, ambient, vis)

    colour, _ = stage("shade", shade, s["albedo"], s["normal"], *attrs)
    stage("composite", lambda c, m: R.composite_pixels(c, pixels, m), colour, frags.soft_mask)
    return times


def run(
    size: int,
    batch: int,
    device: str,
    repeats: int,
    warmup: int,
    torch_repeats: int,
    shadows: bool,
    bracket: int = 3,
) -> dict:
    from harp_kaolin.render import Renderer

    s = scene(size, batch, device)
    hand = s["hand"]
    renderers = {
        b: Renderer(s["camera"], hand.faces, hand.face_uvs, hand.uvs, backend=b, shadows=shadows).to(device)
        for b in BACKENDS
    }

    def timed(backend: str) -> float:
        return time_ms(lambda: step(renderers[backend], s), device)

    # The torch twins first, alone: one timed run before the Warp backend has run in this process. A Warp
    # run that changes the process for torch (its helper thread once got an OpenMP team of its own, and
    # torch ran ~50% slower after it) shows as torch runs slower than this one.
    for _ in range(warmup):
        timed("torch")
    torch_alone = timed("torch")
    for _ in range(warmup):
        timed("warp")
    # The machine's speed drifts by tens of percent within seconds, so every torch run is bracketed by
    # Warp runs: each round's ratio compares runs made within about two seconds of each other.
    times = {"warp": [timed("warp") for _ in range(bracket)], "torch": []}
    ratios = []
    for _ in range(torch_repeats):
        before = times["warp"][-bracket:]
        times["torch"].append(timed("torch"))
        times["warp"] += [timed("warp") for _ in range(bracket)]
        around = before + times["warp"][-bracket:]
        ratios.append(times["torch"][-1] / (sum(around) / len(around)))
    while len(times["warp"]) < repeats:
        times["warp"].append(timed("warp"))
    (img_w, grad_w), (img_t, grad_t) = (step(renderers[b], s) for b in BACKENDS)
    median = {b: statistics.median(times[b]) for b in BACKENDS}
    with torch.no_grad():
        out = renderers["warp"](s["vertices"], s["albedo"], s["normal"], s["light"], s["ambient"])
    covered = float((out.face_idx >= 0).float().mean())
    return {
        "warp_ms": round(median["warp"], 2),
        "torch_ms": round(median["torch"], 2),
        "speedup": round(median["torch"] / median["warp"], 2),
        "speedup_paired": round(statistics.median(ratios), 2),
        "speedup_rounds": [round(r, 2) for r in ratios],
        "device": device,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "mesh": "anny hand, subdivide=1",
        "size": size,
        "batch": batch,
        "vertices": int(s["vertices"].shape[1]),
        "faces": int(hand.faces.shape[0]),
        "texture_size": TEXTURE_SIZE,
        "shadows": shadows,
        "covered_fraction": round(covered, 4),
        "repeats": {b: len(times[b]) for b in BACKENDS},
        "warmup": warmup,
        "warp_runs_ms": [round(t, 1) for t in times["warp"]],
        "torch_runs_ms": [round(t, 1) for t in times["torch"]],
        "torch_before_warp_ms": round(torch_alone, 1),
        "image_max_abs_diff": float((img_w - img_t).abs().max()),
        "grad_rel_diff": {
            k: float((grad_w[k] - grad_t[k]).norm() / grad_t[k].norm().clamp_min(1e-12)) for k in grad_w
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448, help="image width and height, pixels")
    parser.add_argument("--batch", type=int, default=8, help="frames per call")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    # The machine's speed drifts by tens of percent over seconds; medians of more runs keep the ratio steady.
    parser.add_argument(
        "--repeats",
        type=int,
        default=11,
        help="timed Warp runs at least (median reported; the bracketing ones count)",
    )
    parser.add_argument("--torch-repeats", type=int, default=7, help="timed runs of the (slow) torch twins")
    parser.add_argument(
        "--bracket", type=int, default=3, help="Warp runs before the first torch run and after each"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (kernel loading, caches)")
    parser.add_argument("--no-shadows", action="store_true", help="V = 1 (no shadow map)")
    parser.add_argument("--profile", action="store_true", help="also time each rendering step, both backends")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if min(args.size, args.batch, args.repeats, args.torch_repeats, args.bracket) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --repeats, --torch-repeats and --bracket must be >= 1, --warmup >= 0")

    import warp as wp

    wp.config.log_level = wp.LOG_WARNING  # keep stdout to the result
    shadows = not args.no_shadows
    result = run(
        args.size,
        args.batch,
        args.device,
        args.repeats,
        args.warmup,
        args.torch_repeats,
        shadows,
        args.bracket,
    )
    if args.profile:
        from harp_kaolin.render import Renderer

        s = scene(args.size, args.batch, args.device)
        hand = s["hand"]
        result["stages_ms"] = {}
        for backend in BACKENDS:
            r = Renderer(s["camera"], hand.faces, hand.face_uvs, hand.uvs, backend=backend, shadows=shadows)
            stage_times(r.to(args.device), s, args.device)  # warm-up
            result["stages_ms"][backend] = stage_times(r, s, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['mesh']}: {args.size}x{args.size}, B={args.batch}, F={result['faces']}, {args.device}"
        )
        print(f"  warp  {result['warp_ms']:10.1f} ms / batch (forward + backward)")
        print(
            f"  torch {result['torch_ms']:10.1f} ms / batch "
            f"({result['torch_before_warp_ms']:.1f} ms in its run before any Warp run)"
        )
        print(
            f"  speedup {result['speedup']:.1f}x (paired {result['speedup_paired']:.1f}x); "
            f"image max |diff| {result['image_max_abs_diff']:.2e}"
        )
        for backend, stages in result.get("stages_ms", {}).items():
            print(f"  {backend} steps, [forward, backward] ms:")
            for name, ms in stages.items():
                print(f"    {name:<20} {ms[0]:9.1f} {ms[1]:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
