"""Time forward + backward of the geometry energies (edge ARAP + uniform Laplacian + normal consistency).

Runs the Warp kernels and their pure-torch twins in the same process on the once-subdivided anny hand
(a batch of posed meshes against the rest mesh), alternating the two backends so that machine load
hits both alike, and reports the median over ``--repeats`` runs after ``--warmup`` runs.

    python benchmarks/energies.py --batch 18 --json
    python benchmarks/energies.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from timing import device_name, time_ms

from warp_kernels.arap import arap_energy
from warp_kernels.laplacian import laplacian_smoothing
from warp_kernels.mesh_topology import MeshTopology
from warp_kernels.normal_consistency import normal_consistency

TERMS = {
    "arap": lambda x, t, topo, backend: arap_energy(x, t, topo, backend=backend),
    "laplacian": lambda x, t, topo, backend: laplacian_smoothing(x, topo, backend=backend),
    "normal_consistency": lambda x, t, topo, backend: normal_consistency(x, topo, backend=backend),
}
BACKENDS = ("warp", "torch")


def hand_meshes(batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, V, 3) posed vertices, (1, V, 3) rest vertices and (F, 3) faces of the subdivided anny hand."""
    from harp_kaolin.hand import load_hand

    hand = load_hand("anny", subdivide=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pose = 0.3 * torch.randn(batch, hand.num_pose, 3, generator=gen)
        vertices = hand(pose).vertices
        template = hand(torch.zeros(1, hand.num_pose, 3)).vertices
    return vertices.to(device), template.to(device), hand.faces.to(device)


def step(vertices: torch.Tensor, template: torch.Tensor, topology: MeshTopology, backend: str, terms):
    """One forward + backward of the summed terms; returns (loss, gradient)."""
    x = vertices.detach().clone().requires_grad_(True)
    loss = sum(TERMS[name](x, template, topology, backend) for name in terms)
    loss.backward()
    return loss.detach(), x.grad


def run(batch: int, device: str, repeats: int, warmup: int) -> dict:
    vertices, template, faces = hand_meshes(batch, device)
    topology = MeshTopology.build(faces)
    groups = {"total": tuple(TERMS), **{name: (name,) for name in TERMS}}
    times = {group: {backend: [] for backend in BACKENDS} for group in groups}
    for i in range(warmup + repeats):
        for group, terms in groups.items():
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                ms = time_ms(lambda b=backend, t=terms: step(vertices, template, topology, b, t), device)
                if i >= warmup:
                    times[group][backend].append(ms)
    (loss_w, grad_w), (loss_t, grad_t) = (
        step(vertices, template, topology, b, tuple(TERMS)) for b in BACKENDS
    )
    median = {g: {b: statistics.median(times[g][b]) for b in BACKENDS} for g in groups}
    return {
        "warp_ms": round(median["total"]["warp"], 3),
        "torch_ms": round(median["total"]["torch"], 3),
        "speedup": round(median["total"]["torch"] / median["total"]["warp"], 2),
        "device": device,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "mesh": "anny hand, subdivide=1",
        "batch": batch,
        "vertices": int(vertices.shape[1]),
        "faces": int(faces.shape[0]),
        "repeats": repeats,
        "warmup": warmup,
        "terms_ms": {name: {b: round(median[name][b], 3) for b in BACKENDS} for name in TERMS},
        "loss_abs_diff": float((loss_w - loss_t).abs()),
        "grad_max_abs_diff": float((grad_w - grad_t).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=18, help="meshes per call")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per backend (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (kernel loading, caches)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch and --repeats must be >= 1, --warmup >= 0")

    import warp as wp

    wp.config.log_level = wp.LOG_WARNING  # keep stdout to the result
    result = run(args.batch, args.device, args.repeats, args.warmup)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['mesh']}: B={args.batch}, V={result['vertices']}, F={result['faces']}, {args.device}")
        for name, ms in result["terms_ms"].items():
            print(f"  {name:<20} warp {ms['warp']:9.2f} ms   torch {ms['torch']:9.2f} ms")
        print(f"  {'total':<20} warp {result['warp_ms']:9.2f} ms   torch {result['torch_ms']:9.2f} ms")
        print(
            f"  loss |diff| {result['loss_abs_diff']:.2e}, grad max |diff| {result['grad_max_abs_diff']:.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
