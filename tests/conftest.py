"""Shared fixtures. The first anny load builds ~/.cache/anny (about 2 minutes, once per machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood the test log

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


@pytest.fixture(scope="session")
def anny_hand():
    from harp_kaolin.hand import load_hand

    return load_hand("anny", subdivide=0)


@pytest.fixture(scope="session")
def anny_hand_sub():
    from harp_kaolin.hand import load_hand

    return load_hand("anny", subdivide=1)


@pytest.fixture(params=[None, 3], ids=["chunk_default", "chunk_3"])
def cpu_chunk(request, monkeypatch):
    """Items per kernel thread of Warp's ``chunked`` CPU kernels: the default, then 3 (many chunks, and item
    counts that are not a multiple of it, even in the small test scenes)."""
    from warp_kernels import parallel

    if request.param is not None:
        monkeypatch.setattr(parallel, "CPU_CHUNK", request.param)
    return request.param


@pytest.fixture
def two_threads():
    """torch (and so the Warp parts) on two CPU threads for the test (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def shared_sequence(name: str) -> Path:
    """Path of a sequence in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (the ../shared/data folder beside the checkout)")
    return path
