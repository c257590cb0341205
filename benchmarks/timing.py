"""Timing helpers shared by the benchmarks (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import time

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
