"""Packed barycentric interpolation (Warp) vs plain torch indexing."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DEVICES
from warp_kernels import parallel
from warp_kernels.interpolate import interpolate

TOL = 1e-5  # float32, Warp vs torch


def case(device, n=50, batch=3, vertices=9, faces=7, channels=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    bary = torch.rand(n, 3, generator=g, dtype=dtype)
    bary = bary / bary.sum(1, keepdim=True)
    values = torch.randn(batch, vertices, channels, generator=g, dtype=dtype)
    batch_index = torch.randint(0, batch, (n,), generator=g)
    face = torch.randint(0, faces, (n,), generator=g)
    face_list = torch.randint(0, vertices, (faces, 3), generator=g)
    return [t.to(device) for t in (bary, values, batch_index, face, face_list)]


def reference(bary, values, batch_index, face, faces):
    corners = values[batch_index[:, None], faces[face]]  # (N, 3, C)
    return (bary[..., None] * corners).sum(1)


def both(args, upstream):
    results = []
    for fn in (interpolate, reference):
        bary, values = (t.clone().requires_grad_() for t in args[:2])
        out = fn(bary, values, *args[2:])
        (out * upstream).sum().backward()
        results.append((out, bary.grad, values.grad))
    return results


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_matches_torch(device, channels, cpu_chunk):
    args = case(device, channels=channels)
    upstream = torch.randn(args[0].shape[0], channels, generator=torch.Generator().manual_seed(1)).to(device)
    for got, expected in zip(*both(args, upstream)):
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


def test_split_over_threads_matches_torch(monkeypatch):
    """Many pixels on few vertices, split over 2 threads: the vertex gradient (private per-thread sums)
    must lose no contribution."""
    monkeypatch.setattr(parallel, "MIN_ITEMS_PER_PART", 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = case("cpu", n=200_000, batch=2, vertices=4, faces=3, dtype=torch.float64)
        assert len(parallel.split(args[0].device, args[0].shape[0])) == 2
        upstream = torch.randn(
            args[0].shape[0], 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        results = both(args, upstream)
    finally:
        torch.set_num_threads(threads)
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


def test_gradcheck_float64():
    bary, values, *rest = case("cpu", n=6, batch=2, vertices=5, faces=4, dtype=torch.float64)
    inputs = (bary.requires_grad_(), values.requires_grad_())
    assert torch.autograd.gradcheck(lambda w, v: interpolate(w, v, *rest), inputs)


def test_empty_and_errors():
    bary, values, batch_index, face, faces = case("cpu", n=0)
    assert interpolate(bary, values, batch_index, face, faces).shape == (0, 3)
    bary, values, batch_index, face, faces = case("cpu")
    with pytest.raises(ValueError, match="bary"):
        interpolate(bary[:, :2], values, batch_index, face, faces)
    with pytest.raises(ValueError, match="face"):
        interpolate(bary, values, batch_index, face[:-1], faces)
