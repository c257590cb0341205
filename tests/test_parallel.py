"""warp_kernels.parallel: the CPU launch path (recorded launches replayed with new arguments, cached array
descriptors) against plain torch arithmetic, from one and from two threads."""

import functools
import os
import threading

import pytest
import torch

from warp_kernels import parallel
from warp_kernels.raster import _soft_finish


def finish_reference(touched, soft, zeros):
    """torch twin of ``raster._soft_finish``: on the touched pixels, soft = 1 - product and zeros = the
    product P (no zero factor), -P (one) or 0 (more), with P = soft before; elsewhere both unchanged."""
    t = touched.long()
    p, z = soft[t], zeros[t]
    out_soft, out_zeros = soft.clone(), zeros.clone()
    out_soft[t] = torch.where(z == 0, 1 - p, torch.ones_like(p))
    out_zeros[t] = torch.where(z == 0, p, torch.where(z == 1, -p, torch.zeros_like(p)))
    return out_soft, out_zeros


def finish_inputs(pixels, count, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    touched = torch.randperm(pixels, generator=gen)[:count].to(torch.int32)
    soft = torch.rand(pixels, generator=gen, dtype=dtype)
    zeros = torch.randint(0, 3, (pixels,), generator=gen).to(dtype)
    return touched, soft, zeros


def launch_finish(touched, soft, zeros):
    parallel.launch_tensors(_soft_finish, touched.shape[0], [touched, soft, zeros], torch.device("cpu"))
    return soft, zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replayed_launch_takes_new_arguments(dtype):
    """The same kernel launched again and again with other sizes and tensors (the recorded launch is
    replayed with everything replaced) gives each call's own result."""
    for seed, (pixels, count) in enumerate([(70, 20), (36, 36), (27, 5), (70, 33)]):
        touched, soft, zeros = finish_inputs(pixels, count, seed, dtype)
        ref_soft, ref_zeros = finish_reference(touched, soft, zeros)
        got_soft, got_zeros = launch_finish(touched, soft.clone(), zeros.clone())
        torch.testing.assert_close(got_soft, ref_soft, rtol=0, atol=0)
        torch.testing.assert_close(got_zeros, ref_zeros, rtol=0, atol=0)
        assert not torch.equal(got_soft, soft)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_kernel_runs_every_item_once(chunk, monkeypatch):
    """A ``chunked`` kernel (``_soft_finish``) runs each of its items exactly once whatever the items per
    thread, counts that are not a multiple of it included: each item changes its pixel, and a pixel run
    twice (or never) would differ from the twin."""
    monkeypatch.setattr(parallel, "CPU_CHUNK", chunk)
    assert _soft_finish in parallel._CHUNKED
    for seed, (pixels, count) in enumerate([(70, 1), (70, chunk), (70, chunk + 1), (200, 2 * chunk + 5)]):
        count = min(count, pixels)
        touched, soft, zeros = finish_inputs(pixels, count, seed)
        ref_soft, ref_zeros = finish_reference(touched, soft, zeros)
        got_soft, got_zeros = launch_finish(touched, soft.clone(), zeros.clone())
        torch.testing.assert_close(got_soft, ref_soft, rtol=0, atol=0)
        torch.testing.assert_close(got_zeros, ref_zeros, rtol=0, atol=0)


def test_two_threads_launch_the_same_kernel():
    """Each pool thread replays its own recorded launch: two parts launched at once stay independent."""
    inputs = [finish_inputs(90, 60, seed) for seed in (10, 11)]

    def job(k):
        touched, soft, zeros = inputs[k]
        return launch_finish(touched, soft.clone(), zeros.clone())

    for _ in range(5):
        results = parallel.run(torch.device("cpu"), _soft_finish.module.name, [0, 1], job)
        for (touched, soft, zeros), (got_soft, got_zeros) in zip(inputs, results):
            ref_soft, ref_zeros = finish_reference(touched, soft, zeros)
            torch.testing.assert_close(got_soft, ref_soft, rtol=0, atol=0)
            torch.testing.assert_close(got_zeros, ref_zeros, rtol=0, atol=0)


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
    assert a.data == t.data_ptr() and getattr(a, "_ref", None) is None


def test_launch_checks_arguments():
    touched, soft, zeros = finish_inputs(4, 4, 0)
    cpu = torch.device("cpu")
    with pytest.raises(TypeError, match="argument touched"):
        parallel.launch_tensors(_soft_finish, 4, [touched.long(), soft, zeros], cpu)
    with pytest.raises(TypeError, match="argument soft"):
        parallel.launch_tensors(_soft_finish, 4, [touched, soft.tolist(), zeros], cpu)
    with pytest.raises(TypeError, match="expects 3 arguments"):
        parallel.launch_tensors(_soft_finish, 4, [touched, soft], cpu)


needs_openmp = pytest.mark.skipif(
    not parallel._openmp(),
    reason="torch runs on its native thread pool here, not OpenMP: torch_serial is off",
)


def _task_count() -> int:
    return len(os.listdir("/proc/self/task"))


@needs_openmp
def test_torch_serial_sets_one_thread_and_restores(two_threads, monkeypatch):
    """Inside ``torch_serial`` torch runs on one thread while Warp still splits work in two; nested blocks,
    errors, CUDA and the switch leave the count as it was."""
    cpu = torch.device("cpu")
    with parallel.torch_serial(cpu):
        assert torch.get_num_threads() == 1
        assert parallel.num_threads() == 2 and parallel.num_parts(cpu, 10**6) == 2
        with parallel.torch_serial(cpu):
            assert torch.get_num_threads() == 1 and parallel.num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and parallel.num_threads() == 2
    with pytest.raises(ValueError, match="inside"):
        with parallel.torch_serial(cpu):
            raise ValueError("inside")
    assert torch.get_num_threads() == 2
    with parallel.torch_serial(torch.device("cuda")):  # a device object only: nothing runs on it
        assert torch.get_num_threads() == 2
    monkeypatch.setattr(parallel, "SERIAL_TORCH", False)
    with parallel.torch_serial(cpu):
        assert torch.get_num_threads() == 2


def test_one_part_makes_every_split_one_part_on_its_thread_only(two_threads):
    """Inside ``one_part`` the calling thread splits nothing (one part, also in ``torch_serial``), other
    threads still split in two, and the block restores the count after nesting and errors."""
    cpu = torch.device("cpu")
    seen = {}

    def other():
        torch.set_num_threads(2)  # per thread under OpenMP: a new thread starts from the default
        seen["parts"] = parallel.num_parts(cpu, 10**6)

    with parallel.one_part():
        assert parallel.num_threads() == 1 and parallel.split(cpu, 10**6) == [slice(0, 10**6)]
        with parallel.torch_serial(cpu), parallel.one_part():
            assert parallel.num_parts(cpu, 10**6) == 1
        assert parallel.num_threads() == 1
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen["parts"] == 2 and parallel.num_threads() == 2
    with pytest.raises(ValueError, match="inside"):
        with parallel.one_part():
            raise ValueError("inside")
    assert parallel.num_parts(cpu, 10**6) == 2


@needs_openmp
def test_run_keeps_torch_of_helpers_on_one_thread(two_threads):
    """Jobs of ``parallel.run`` see one torch thread (caller and helper), the caller gets its two back, and
    a thread started afterwards still gets two (the setting does not leak)."""
    cpu = torch.device("cpu")
    seen = parallel.run(
        cpu, _soft_finish.module.name, [0, 1], lambda k: (threading.get_ident(), torch.get_num_threads())
    )
    (caller, caller_threads), (helper, helper_threads) = seen
    assert caller == threading.get_ident() and helper != caller
    assert caller_threads == 1 and helper_threads == 1
    assert torch.get_num_threads() == 2
    later = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [2]


@needs_openmp
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to count threads")
@pytest.mark.parametrize("serial", [True, False])
def test_parallel_torch_op_on_a_helper_starts_no_openmp_team(two_threads, monkeypatch, serial):
    """A large torch op inside a helper's job runs on that thread, with ``torch_serial`` on or off (the
    pool's initializer): the process gains no OpenMP workers.

    (A helper with its own OpenMP team would leave more OpenMP threads than cores, and libgomp then stops
    spin-waiting, which made every later parallel torch op in the process about 50% slower here.)"""
    monkeypatch.setattr(parallel, "SERIAL_TORCH", serial)
    parallel._HELPERS.clear()  # a fresh helper thread, set up under this test's switch (the old one idles)
    cpu = torch.device("cpu")
    x = torch.rand(4_000_000)

    def job(k):
        return float((x * (k + 2)).sum())

    parallel.run(cpu, _soft_finish.module.name, [0, 1], lambda k: None)  # the pool exists
    before = _task_count()
    sums = parallel.run(cpu, _soft_finish.module.name, [0, 1], job)
    assert _task_count() == before
    total = float(x.double().sum())
    assert sums == pytest.approx([2 * total, 3 * total], rel=1e-4)


@needs_openmp
def test_serial_decorates_forward_and_backward(two_threads):
    """``parallel.serial`` runs an autograd Function's forward and backward inside ``torch_serial``."""
    seen = []

    class Double(torch.autograd.Function):
        @staticmethod
        @parallel.serial
        def forward(ctx, x):
            seen.append(torch.get_num_threads())
            return 2 * x

        @staticmethod
        @parallel.serial
        def backward(ctx, g):
            seen.append(torch.get_num_threads())
            return 2 * g

    x = torch.ones(3, requires_grad=True)
    Double.apply(x).sum().backward()
    assert seen == [1, 1] and torch.get_num_threads() == 2
    torch.testing.assert_close(x.grad, torch.full((3,), 2.0))


def test_fan_out_gives_aliases_whose_gradients_add_up():
    """Each alias shares the tensor's storage; the gradient is the sum over the aliases that got one, as
    the autograd engine sums a tensor used several times."""
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 3, dtype=torch.float64)
    a, b, c, unused = parallel.fan_out(x, 4)
    assert all(t.data_ptr() == x.data_ptr() and t.shape == x.shape for t in (a, b, c, unused))
    ((a * w[0]).sum() + (b.square() * w[1]).sum() + (c.sin() * w[2]).sum()).backward()
    expected = w[0] + 2 * x.detach() * w[1] + x.detach().cos() * w[2]
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    single = torch.randn(4, requires_grad=True)
    (only,) = parallel.fan_out(single, 1)
    (3 * only).sum().backward()
    torch.testing.assert_close(single.grad, torch.full((4,), 3.0))
    plain = torch.randn(4)
    assert not any(t.requires_grad for t in parallel.fan_out(plain, 2))
    with pytest.raises(ValueError, match="at least 1"):
        parallel.fan_out(x, 0)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_accumulator_total_is_the_sum_of_the_parts(two_threads, parts):
    """Parts zero and fill their own accumulators (possibly on other threads); the total, summed over the
    threads in ranges, equals the serial sum of the parts in order, bit for bit."""
    cpu = torch.device("cpu")
    like = torch.full((3, 200_000), float("nan"))  # larger than two reduction ranges
    acc = parallel.Accumulator(like, parts)
    gen = torch.Generator().manual_seed(parts)
    adds = [torch.randn(like.shape, generator=gen) for _ in range(parts)]

    def job(k):
        acc.part(k).add_(adds[k])

    parallel.run(cpu, None, list(range(parts)), job)
    expected = torch.zeros(like.shape)
    for a in adds:
        expected = expected + a
    assert torch.equal(acc.total(), expected)
    untouched = parallel.Accumulator(like, 2)
    assert torch.equal(untouched.total(), torch.zeros(like.shape))


def test_totals_sums_several_accumulators_in_one_run(two_threads, monkeypatch):
    """``totals`` gives each accumulator's serial sum, bit for bit, from one ``run`` for all of them (a large
    and a small one, one never taken)."""
    cpu = torch.device("cpu")
    shapes = [(4, 100_000), (7,), (3, 3)]
    accs = [parallel.Accumulator(torch.empty(shape), 2) for shape in shapes]
    gen = torch.Generator().manual_seed(7)
    adds = [[torch.randn(shape, generator=gen) for _ in range(2)] for shape in shapes]

    def job(k):
        for acc, a in zip(accs[:2], adds[:2]):
            acc.part(k).add_(a[k])

    parallel.run(cpu, None, [0, 1], job)
    runs = []
    real_run = parallel.run
    monkeypatch.setattr(parallel, "run", lambda *a: runs.append(len(a[2])) or real_run(*a))
    got = parallel.totals(accs)
    assert runs == [2]
    assert torch.equal(got[0], adds[0][0] + adds[0][1]) and torch.equal(got[1], adds[1][0] + adds[1][1])
    assert torch.equal(got[2], torch.zeros(3, 3))


@needs_openmp
def test_renderer_backward_runs_no_parallel_torch_op(two_threads, anny_hand_sub):
    """No torch op that computes runs on more than one thread in the Warp renderer's forward or backward:
    every one runs inside ``torch_serial`` (the gradient sums of tensors with several consumers too,
    ``fan_out``), so torch's OpenMP worker never spins on the core a Warp part needs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from harp_kaolin.render import Camera, Renderer

    grain = 32768  # at::internal::GRAIN_SIZE: smaller ops run on one thread anyway
    found = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            if torch.get_num_threads() > 1 and not func.is_view and max(t.numel() for t in tensors) > grain:
                found.append(str(func))
            return out

    hand = anny_hand_sub
    with torch.no_grad():
        v = hand(torch.zeros(2, hand.num_pose, 3), None, torch.tensor([[0.0, 1.57, 0.0]] * 2)).vertices
        v = v - (v.amin(1, keepdim=True) + v.amax(1, keepdim=True)) / 2 + torch.tensor([0.0, 0.0, 0.3])
    assert v.numel() > grain
    camera = Camera(width=128, height=128, fx=200.0, fy=200.0, cx=64.0, cy=64.0)
    r = Renderer(camera, hand.faces, hand.face_uvs, hand.uvs, backend="warp")
    leaves = [t.clone().requires_grad_() for t in (v, torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))]
    light = torch.tensor([0.1, -0.1, 0.1], requires_grad=True)
    weights = torch.rand(2, 128, 128, 3)
    with Record():
        out = r(*leaves, light, torch.tensor([0.0]))
        assert int((out.face_idx >= 0).sum()) * 3 > grain  # the packed pixels' tensors are large too
        out.image.backward(weights)
    assert found == []
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (*leaves, light))


def test_run_errors_nesting_and_concurrent_callers(two_threads):
    """A helper's exception reaches the caller, the caller's own error wins after waiting for the helpers,
    a run inside a job and runs from two threads at once complete (alone when the pool is busy), and the
    pool keeps working after each."""
    cpu = torch.device("cpu")

    def fail_on(k_bad):
        def job(k):
            if k == k_bad:
                raise ValueError(f"part {k}")
            return k

        return job

    with pytest.raises(ValueError, match="part 1"):
        parallel.run(cpu, None, [0, 1], fail_on(1))
    finished = []

    def slow_then_fail(k):
        if k == 0:
            raise KeyError("caller")
        threading.Event().wait(0.05)
        finished.append(k)

    with pytest.raises(KeyError, match="caller"):
        parallel.run(cpu, None, [0, 1], slow_then_fail)
    assert finished == [1]  # the caller waited for its helper before raising
    nested = parallel.run(
        cpu, None, [0, 1], lambda k: parallel.run(cpu, None, [10 * k, 10 * k + 1], lambda j: j)
    )
    assert nested == [[0, 1], [10, 11]]
    results = {}

    def caller(name):
        results[name] = [parallel.run(cpu, None, [0, 1, 2], lambda k: (name, k)) for _ in range(50)]

    threads = [threading.Thread(target=caller, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in "ab":
        assert results[name] == [[(name, 0), (name, 1), (name, 2)]] * 50
    assert parallel.run(cpu, None, [0, 1], fail_on(-1)) == [0, 1]


def test_run_launches_runs_each_parts_steps_in_order(two_threads):
    """Launches prepared on the calling thread run on their part's thread after the part's earlier steps
    (a callable zeroing the output first): each part's result is its own call's, as launched alone."""
    cpu = torch.device("cpu")
    inputs = [finish_inputs(40, 25, seed) for seed in (20, 21, 22)]
    expected = [finish_reference(*inputs_k) for inputs_k in inputs]
    parts, outputs = [], []
    for touched, soft, zeros in inputs:
        out_soft, out_zeros = soft.clone(), torch.full_like(zeros, float("nan"))
        # the first step sets the zero counts the launch reads: run after it, the launch sees them
        parts.append(
            [lambda o=out_zeros, z=zeros: o.copy_(z), (_soft_finish, 25, [touched, out_soft, out_zeros])]
        )
        outputs.append((out_soft, out_zeros))
    parallel.run_launches(cpu, _soft_finish.module.name, parts)
    for (out_soft, out_zeros), (ref_soft, ref_zeros) in zip(outputs, expected):
        torch.testing.assert_close(out_soft, ref_soft, rtol=0, atol=0)
        torch.testing.assert_close(out_zeros, ref_zeros, rtol=0, atol=0)
    parallel.run_launches(cpu, _soft_finish.module.name, [])  # nothing to run


def test_descriptor_matches_warps_own_conversion():
    """The descriptors made directly hold what ``wp.from_torch(return_ctype=True)`` makes: address, rank,
    shape and byte strides, for contiguous, strided, 1-4 dimensional, float and integer tensors."""
    import warp as wp

    base = torch.rand(4, 5, 6, 7, dtype=torch.float64)
    cases = [
        torch.rand(9),
        base,
        base[:, 1:, ::2, 3],
        base.float().permute(3, 0, 2, 1),
        torch.arange(12, dtype=torch.int32).reshape(3, 4)[:, 1:],
        torch.arange(5, dtype=torch.int64),
    ]
    for t in cases:
        got, expected = parallel._descriptor(t), wp.from_torch(t, requires_grad=False, return_ctype=True)
        assert (got.data, got.grad, got.ndim, got.flags) == (expected.data, 0, expected.ndim, expected.flags)
        assert list(got.shape) == list(expected.shape) and list(got.strides) == list(expected.strides)


def _dummy_arguments(signature: list, seed: int) -> list:
    """An argument per kernel parameter: tensors of its dtype and rank (every other one a strided view),
    ints and floats (Python floats, and Warp scalars for every other float)."""
    import warp as wp

    torch_dtype = {wp.float32: torch.float32, wp.float64: torch.float64, wp.int32: torch.int32}
    torch_dtype[wp.int64] = torch.int64
    gen = torch.Generator().manual_seed(seed)
    args = []
    for k, (_, arg, array, dtype, ndim) in enumerate(signature):
        if array:
            base = (torch.rand((6,) * ndim, generator=gen) * 100).to(torch_dtype[dtype])
            args.append(base[(slice(1, None, 2),) * ndim] if k % 2 else base[(slice(0, 3),) * ndim])
        elif arg in (wp.float32, wp.float64):
            args.append(0.375 + k if k % 2 else arg(0.375 + k))
        else:
            args.append(7 + k)
    return args


def test_replayed_launch_fills_the_struct_warp_builds():
    """A replayed CPU launch (``parallel._CpuLaunch``) writes, byte for byte, the argument struct and
    launch bounds that Warp builds for the same arguments (``wp.launch`` of Warp arrays, then the struct of
    its parameters): arrays of 1 to 4 dimensions, strided views, int and float scalars, float32 and
    float64 kernels, 1-d and 2-d launches; a second set of arguments replaces the first."""
    import ctypes

    import warp as wp

    from warp_kernels import project, raster, shading, shadow

    wp.init()
    cpu = torch.device("cpu")
    cases = [(shading._shade, 1000), (raster._soft_boxes, 300), (shadow._pcf_forward, 77)]
    cases += [(project._project_vertices, (2, 50)), (raster._hard_backward, 9)]
    for scalar in (wp.float32, wp.float64):
        for kernel, dim in cases:
            concrete = parallel.overload(kernel, scalar)
            signature = parallel._signature(concrete)
            chunked = kernel in parallel._CHUNKED
            for seed in (0, 1):
                args = _dummy_arguments(signature[: len(signature) - 2] if chunked else signature, seed)
                command = parallel._command(kernel, dim, args, cpu, ("test", seed > 0))
                assert isinstance(command, parallel._CpuLaunch)
                command = parallel._command(kernel, dim, args, cpu, ("test", False))  # replay, same slot
                full, threads = args, dim
                if chunked:
                    full, threads = [*args, dim, parallel.CPU_CHUNK], -(-dim // parallel.CPU_CHUNK)
                inputs = [wp.from_torch(a, requires_grad=False) if torch.is_tensor(a) else a for a in full]
                reference = wp.launch(concrete, dim=threads, inputs=inputs, device="cpu", record_cmd=True)
                fields = [(a.label, type(p)) for a, p in zip(concrete.adj.args, reference.params[1:])]
                expected = type("Expected", (ctypes.Structure,), {"_fields_": fields})()
                for (name, _), value in zip(fields, reference.params[1:]):
                    setattr(expected, name, value)
                assert bytes(command._args) == bytes(expected), (kernel.key, scalar, seed)
                assert bytes(command._bounds) == bytes(reference.bounds), (kernel.key, dim)


def test_launch_with_a_vector_argument_replays_through_warp(monkeypatch):
    """A kernel with an argument that is neither an array nor a plain scalar (a vec3) keeps Warp's own
    replay, and its launches compute what torch does, for new arguments too; a launch with more
    dimensions than the kernel's thread index is refused."""
    import warp as wp

    kernel = _shifted_norms()
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(5)
    for seed in range(2):
        points, out = torch.rand(10, 3, generator=gen), torch.empty(10)
        shift = wp.vec3(0.5 + seed, -1.0, 2.0)
        parallel.launch_tensors(kernel, 10, [points, shift, out], cpu)
        expected = (points + torch.tensor([0.5 + seed, -1.0, 2.0])).norm(dim=1)
        torch.testing.assert_close(out, expected)
    command = parallel._command(kernel, 10, [points, shift, out], cpu, None)
    assert not isinstance(command, parallel._CpuLaunch)
    from warp_kernels import raster

    corners, window = torch.zeros(30, dtype=torch.int32), torch.tensor([0, 2, 0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="launch dimensions"):
        parallel._command(raster._column_prefix, (2, 2), [corners, 2, 4, 4, window], cpu, None)


@functools.cache
def _shifted_norms():
    """A kernel with a vec3 argument: out[i] = |points[i] + shift| (built on first use)."""
    import warp as wp

    @wp.kernel
    def shifted_norms(points: wp.array2d(dtype=wp.float32), shift: wp.vec3, out: wp.array(dtype=wp.float32)):
        i = wp.tid()
        out[i] = wp.length(wp.vec3(points[i, 0], points[i, 1], points[i, 2]) + shift)

    return shifted_norms
