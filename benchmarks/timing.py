"""Timing helpers shared by the benchmarks (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    """Wait for queued CUDA work so a wall-clock interval covers it."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str) -> float:
    """Milliseconds of one call of ``fn`` on ``device``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000.0


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's: /proc/cpuinfo's model name with its family, model and widest AVX
    (avx512f, avx2 or neither; a virtual machine's model name is often only the vendor's line, e.g.
    "AMD EPYC"), so that figures taken on different machines of the same kind can be told apart."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine() or "cpu"
    name = info.get("model name", platform.machine() or "cpu")
    flags = info.get("flags", "").split()
    avx = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{name} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, {avx})"
