"""Every Warp kernel module of the project builds for CUDA, on machines without a GPU too.

The CUDA tests of the kernels run only where a GPU is; this one needs Warp's bundled NVRTC alone. It
generates each module's CUDA source (every kernel and declared overload, float32 and float64) and
compiles it to PTX for an H100 (sm_90) with ``wp.compile_aot_module``, so a kernel that only the CUDA
build rejects fails here. Artifacts go to Warp's kernel cache: a warm cache skips the compilation.
"""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "warp_kernels.arap",
    "warp_kernels.interpolate",
    "warp_kernels.laplacian",
    "warp_kernels.normal_consistency",
    "warp_kernels.project",
    "warp_kernels.raster",
    "warp_kernels.shading",
    "warp_kernels.shadow",
]
ARCH = 90  # H100


def _nvrtc_archs() -> set:
    import warp as wp

    wp.init()
    runtime = wp._src.context.runtime  # no public query; only decides the skip
    return set(getattr(runtime, "nvrtc_supported_archs", None) or ())


def test_every_kernel_module_is_listed():
    """MODULES holds every module of the package that defines a Warp kernel."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "warp_kernels"
    decorated = [p for p in root.glob("*.py") if any(line.startswith("@wp.kernel") for line in p.open())]
    found = sorted(f"warp_kernels.{p.stem}" for p in decorated)
    assert found == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_kernel_module_compiles_for_cuda(name):
    if ARCH not in _nvrtc_archs():
        pytest.skip(f"Warp has no NVRTC for sm_{ARCH} here (CPU-only build or no CUDA toolkit libraries)")
    import warp as wp

    module = importlib.import_module(name)
    artifacts = wp.compile_aot_module(module, arch=ARCH, use_ptx=True)
    assert artifacts and all(p.name.endswith(f".sm{ARCH}.ptx") and p.stat().st_size > 0 for p in artifacts)
