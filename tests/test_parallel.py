"""warp_kernels.parallel: the CPU launch path (recorded launches replayed with new arguments, cached array
descriptors) against plain torch arithmetic, from one and from two threads."""

import pytest
import torch

from warp_kernels import parallel
from warp_kernels.raster import _soft_finish


def finish_reference(fidx, soft, window, height, width):
    """torch twin of ``raster._soft_finish``: on uncovered pixels of the window, product = soft and
    soft = 1 - soft; elsewhere both unchanged."""
    top, bottom, left, right = window.tolist()
    inside = torch.zeros(fidx.shape[0] // (height * width), height, width, dtype=torch.bool)
    inside[:, top:bottom, left:right] = True
    hit = inside.reshape(-1) & (fidx < 0)
    product = torch.zeros_like(soft)
    product[hit] = soft[hit]
    out = soft.clone()
    out[hit] = 1 - soft[hit]
    return out, product


def finish_inputs(batch, height, width, window, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    fidx = torch.randint(-1, 3, (batch * height * width,), generator=gen, dtype=torch.int32)
    soft = torch.rand(batch * height * width, generator=gen, dtype=dtype)
    return fidx, soft, torch.tensor(window, dtype=torch.int32)


def launch_finish(fidx, soft, window, batch, height, width):
    product = torch.zeros_like(soft)
    rows, columns = int(window[1] - window[0]), int(window[3] - window[2])
    args = [fidx, height, width, window, soft, product]
    parallel.launch_tensors(_soft_finish, batch * rows * columns, args, torch.device("cpu"))
    return soft, product


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replayed_launch_takes_new_arguments(dtype):
    """The same kernel launched again and again with other sizes, windows and tensors (the recorded launch
    is replayed with everything replaced) gives each call's own result."""
    cases = [(2, 5, 7, [1, 4, 2, 6]), (1, 9, 4, [0, 9, 0, 4]), (3, 3, 3, [1, 2, 1, 3])]
    cases.append((2, 5, 7, [0, 5, 3, 4]))
    for seed, (batch, height, width, window) in enumerate(cases):
        fidx, soft, w = finish_inputs(batch, height, width, window, seed, dtype)
        ref_soft, ref_product = finish_reference(fidx, soft, w, height, width)
        got_soft, got_product = launch_finish(fidx, soft.clone(), w, batch, height, width)
        torch.testing.assert_close(got_soft, ref_soft, rtol=0, atol=0)
        torch.testing.assert_close(got_product, ref_product, rtol=0, atol=0)


def test_two_threads_launch_the_same_kernel():
    """Each pool thread replays its own recorded launch: two parts launched at once stay independent."""
    height, width, window = 6, 5, [0, 6, 0, 5]
    inputs = [finish_inputs(3, height, width, window, seed) for seed in (10, 11)]

    def job(k):
        fidx, soft, w = inputs[k]
        return launch_finish(fidx, soft.clone(), w, 3, height, width)

    for _ in range(5):
        results = parallel.run(torch.device("cpu"), _soft_finish.module.name, [0, 1], job)
        for (fidx, soft, w), (got_soft, got_product) in zip(inputs, results):
            ref_soft, ref_product = finish_reference(fidx, soft, w, height, width)
            torch.testing.assert_close(got_soft, ref_soft, rtol=0, atol=0)
            torch.testing.assert_close(got_product, ref_product, rtol=0, atol=0)


def test_descriptor_cache_keys_by_what_it_describes():
    """A cached descriptor is reused only for the same address, shape, strides and dtype, and holds no
    reference to its tensor."""
    t = torch.arange(12, dtype=torch.float32)
    a = parallel._descriptor(t)
    assert parallel._descriptor(t) is a
    assert parallel._descriptor(t.view(3, 4)) is not a
    assert parallel._descriptor(t.view(torch.int32)) is not a
    assert parallel._descriptor(t[2:]) is not a
    view = parallel._descriptor(t.view(3, 4))
    assert (view.ndim, list(view.shape[:2]), list(view.strides[:2])) == (2, [3, 4], [16, 4])
    assert a.data == t.data_ptr() and a._ref is None


def test_launch_checks_arguments():
    fidx, soft, window = finish_inputs(1, 2, 2, [0, 2, 0, 2], 0)
    product = torch.zeros_like(soft)
    cpu = torch.device("cpu")
    with pytest.raises(TypeError, match="argument fidx"):
        parallel.launch_tensors(_soft_finish, 4, [fidx.long(), 2, 2, window, soft, product], cpu)
    with pytest.raises(TypeError, match="argument window"):
        parallel.launch_tensors(_soft_finish, 4, [fidx, 2, 2, [0, 2, 0, 2], soft, product], cpu)
    with pytest.raises(TypeError, match="expects 6 arguments"):
        parallel.launch_tensors(_soft_finish, 4, [fidx, 2, 2, window, soft], cpu)
