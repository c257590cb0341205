"""Run Warp CPU launches on several cores.

Warp runs a CPU launch on the calling thread, one thread after the other, and releases the GIL while it
runs; so the work of one launch can be spread over cores by splitting its index range into contiguous
parts and launching each part from its own Python thread. On CUDA a launch already uses the whole GPU:
there is one part.

Warp's ``atomic_add`` is a plain read-modify-write on CPU (launches are sequential there), so parts that
run at the same time must never accumulate into the same array element: give each part its own
accumulator (``Accumulator``: each part zeroes its own, the sum is split over the threads too), or split
at boundaries that keep the targets disjoint (e.g. whole batch items).

    parts = split(device, n)                       # [slice, ...]
    run(device, module, parts, lambda part: launch_on(part))

torch's own CPU ops between the launches (allocations, fills, small sums) run inside ``torch_serial()``
(on one thread): torch's OpenMP workers spin-wait for a few milliseconds after every parallel op, and a
spinning worker takes half of a core from the Warp part running there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import warp as wp

MIN_ITEMS_PER_PART = 2048  # below this the thread hand-off costs more than it saves
CPU_CHUNK = 256  # items per kernel thread of a ``chunked`` kernel on CPU (1 on CUDA)
SERIAL_TORCH = True  # torch_serial() sets torch to one thread (off: a no-op, for A/B timing)

_HELPERS: list = []  # the pool: _Helper threads, created as runs need them
_HELPERS_BUSY = threading.Lock()  # held by the run using the pool (another run meanwhile works alone)
_LOADED: set = set()


def num_threads() -> int:
    """The CPU threads Warp launches are spread over: ``torch.get_num_threads()``, as it was outside any
    ``torch_serial`` block; 1 inside ``one_part``."""
    if getattr(_THREAD, "one_part", False):
        return 1
    return getattr(_THREAD, "threads", None) or torch.get_num_threads()


def check_buffer(name: str, t, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``t`` if it is a contiguous tensor of ``shape``, ``dtype`` on ``device`` (an output buffer a
    launch writes into, e.g. the ``out=`` of ``raster.dibr_rasterization_packed``); else a ValueError
    that names ``name`` and says what it got."""
    if not torch.is_tensor(t) or t.shape != shape or t.dtype != dtype or t.device != device:
        got = f"{tuple(t.shape)} {t.dtype} on {t.device}" if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"{name} must be a {shape} {dtype} tensor on {device}, got {got}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t


@contextlib.contextmanager
def one_part() -> Iterator[None]:
    """Every launch of the calling thread in the block runs as one part (``num_threads()`` is 1 there):
    for work that is itself one of several jobs of a ``run``, each on its own CPU thread (e.g. one batch
    slice of a render, ``harp_kaolin.render.renderer``)."""
    previous = getattr(_THREAD, "one_part", False)
    _THREAD.one_part = True
    try:
        yield
    finally:
        _THREAD.one_part = previous


@contextlib.contextmanager
def torch_serial(device: torch.device | str | None = None) -> Iterator[None]:
    """Run torch's CPU ops in the block on the calling thread only (``torch.set_num_threads(1)``, restored
    at the end), while ``num_threads`` keeps the number of threads for Warp's parts.

    After each op it runs in parallel, torch's OpenMP workers spin-wait for the next (GOMP_SPINCOUNT,
    milliseconds), and on a machine with as many cores as threads a spinning worker halves the speed
    of the Warp part running on its core. The ops between Warp launches are small (allocations, fills,
    a few sums), so on one thread they cost less than that. The setting is per thread (OpenMP's
    nthreads), so torch work on other threads keeps its own; it does nothing on CUDA, when nested, with
    one thread, or when torch runs its own thread pool instead of OpenMP. ``SERIAL_TORCH = False``
    switches it off.
    """
    if (
        not SERIAL_TORCH
        or getattr(_THREAD, "threads", None)
        or torch.device(device or "cpu").type != "cpu"
        or not _openmp()
    ):
        yield
        return
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    _THREAD.threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _THREAD.threads = None


@functools.cache
def _openmp() -> bool:
    """Whether torch's CPU ops run on OpenMP (its native thread pool can't change its size once it runs,
    and warns when asked to)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def serial(method: Callable) -> Callable:
    """Decorator of an autograd Function's ``forward`` or ``backward``: its body runs inside
    ``torch_serial`` on the device of its first tensor argument."""

    @functools.wraps(method)
    def wrapped(ctx, *args):
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        with torch_serial(device):
            return method(ctx, *args)

    return wrapped


def num_parts(device: torch.device, n: int, min_items: int | None = None) -> int:
    """How many parts to split ``n`` items into: up to ``num_threads()`` on CPU, 1 on CUDA; each part
    gets at least ``min_items`` (default ``MIN_ITEMS_PER_PART``)."""
    min_items = MIN_ITEMS_PER_PART if min_items is None else min_items
    if device.type != "cpu" or n < 2 * min_items:
        return 1
    return max(1, min(num_threads(), n // min_items))


def split(device: torch.device, n: int, min_items: int | None = None) -> list[slice]:
    """Contiguous, near-equal slices covering ``range(n)`` (one slice on CUDA or for small ``n``)."""
    parts = num_parts(device, n, min_items)
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(parts)]


def split_at(device: torch.device, keys: torch.Tensor, min_items: int | None = None) -> list[slice]:
    """Like ``split`` for a sorted key per item (e.g. the batch index), moving every cut to a key change so
    that no key spans two parts (fewer parts when the keys are too few)."""
    n = keys.shape[0]
    cuts = [s.start for s in split(device, n, min_items)[1:]]
    if not cuts:
        return [slice(0, n)]
    at = torch.searchsorted(keys, keys[cuts], right=False).tolist()  # first item of each cut's key
    bounds = sorted({0, n, *at})
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def declare_float_overloads(namespace: dict) -> None:
    """Instantiate every generic (``Any``-typed) kernel in ``namespace`` for float32 and float64.

    Call at the end of a kernel module (``declare_float_overloads(globals())``): the module is then built
    once, with all its overloads, before any launch. A generic kernel that got its overload at launch
    time would rebuild the module there, and two threads launching at once would race on it.
    """
    kernels = [k for k in namespace.values() if isinstance(k, wp.Kernel) and k.is_generic]
    for kernel in kernels:
        for scalar in (wp.float32, wp.float64):
            types = {}
            for name, arg in kernel.adj.arg_types.items():
                if arg is Any:
                    types[name] = scalar
                elif wp.types.is_array(arg) and arg.dtype is Any:
                    types[name] = wp.array(dtype=scalar, ndim=arg.ndim)
            wp.overload(kernel, types)


_CHUNKED: set = set()


def chunked(kernel):
    """Decorator (above ``@wp.kernel``) of a kernel over ``items`` elements whose threads each run
    ``chunk`` consecutive ones: its last two arguments are ``items: int, chunk: int``, and its body
    loops ``for k in range(thread * chunk, min(thread * chunk + chunk, items))``.

    Launches (``launch_tensors``, ``run_launches``) then take the number of items as the dimension and
    add both arguments themselves: ``CPU_CHUNK`` items per thread on CPU, 1 on CUDA. On CPU, Warp runs a
    kernel thread as a call that copies every argument descriptor it is given; for kernels with many
    arrays that is tens of ns per thread, which a chunk of items pays once (``_shade``: 15 -> 9 ms for
    91k pixels).
    """
    _CHUNKED.add(kernel)
    return kernel


_TORCH_TO_WARP = {
    torch.float32: wp.float32,
    torch.float64: wp.float64,
    torch.int32: wp.int32,
    torch.int64: wp.int64,
}
_OVERLOADS: dict = {}
_SIGNATURES: dict = {}
_DESCRIPTORS: dict = {}
_MAX_DESCRIPTORS = 4096
_THREAD = threading.local()  # per thread: its recorded CPU launches (by concrete kernel), torch_serial state


def scalar(dtype: torch.dtype, value: float):
    """``value`` as a Warp scalar of the float type matching ``dtype`` (float64 or float32)."""
    return wp.float64(value) if dtype == torch.float64 else wp.float32(value)


def overload(kernel, scalar):
    """The concrete kernel of ``kernel`` for the float type ``scalar`` (the kernel itself when it is not
    generic): every ``Any`` becomes ``scalar``, as ``declare_float_overloads`` declared it. Cached."""
    key = (kernel, scalar)
    found = _OVERLOADS.get(key)
    if found is None:
        if not kernel.is_generic:
            found = kernel
        else:
            types = []
            for arg in kernel.adj.arg_types.values():
                if arg is Any:
                    arg = scalar
                elif wp.types.is_array(arg) and arg.dtype is Any:
                    arg = wp.array(dtype=scalar, ndim=arg.ndim)
                types.append(arg)
            found = kernel.get_overload(types)
            if found is None:
                raise RuntimeError(f"kernel {kernel.key} has no declared overload for {scalar.__name__}")
        _OVERLOADS[key] = found
    return found


def _signature(concrete) -> list[tuple]:
    """Per argument of a concrete kernel: (name, Warp type, is an array, its dtype, its ndim). Cached."""
    found = _SIGNATURES.get(concrete)
    if found is None:
        found = []
        for name, arg in concrete.adj.arg_types.items():
            array = wp.types.is_array(arg)
            found.append((name, arg, array, arg.dtype if array else None, arg.ndim if array else 0))
        _SIGNATURES[concrete] = found
    return found


def _descriptor(t: torch.Tensor):
    """Warp's low-level array descriptor of a tensor (what ``from_torch(return_ctype=True)`` returns),
    cached by what it holds (address, shape, strides, dtype): a training loop reallocates the same
    buffers at the same addresses, and a descriptor is only those numbers. It keeps no reference to the
    tensor (the caller keeps the tensor alive while a launch runs).

    A new one is made directly (address, rank, shape, byte strides): ``from_torch`` took ~25 us each.
    CPU replays (``_CpuLaunch``) write the same numbers into their struct themselves."""
    key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
    found = _DESCRIPTORS.get(key)
    if found is None:
        if t.dim() > _MAX_DIMS or not t.is_cpu:  # rare: Warp's own conversion and checks
            found = wp.from_torch(t, requires_grad=False, return_ctype=True)
            found._ref = found._gradref = None
        else:
            size = t.element_size()
            found = _ARRAY_T(t.data_ptr(), 0, t.dim(), t.shape, [size * s for s in t.stride()])
        if len(_DESCRIPTORS) >= _MAX_DESCRIPTORS:
            _DESCRIPTORS.clear()
        _DESCRIPTORS[key] = found
    return found


_ARRAY_T = type(wp.from_torch(torch.zeros(1), return_ctype=True))  # Warp's descriptor type (array_t)
_MAX_DIMS = len(_ARRAY_T().shape)  # dimensions a descriptor holds


def launch_tensors(kernel, dim, args: list, device: torch.device) -> None:
    """``wp.launch`` with torch tensors among the arguments, at a fraction of its Python cost.

    The generic kernel's overload is picked once per float type (float64 if any float tensor is); the
    tensors' dtype and dimension count are checked here (Warp does not check what it is given below).
    On CUDA the tensors go in as Warp's low-level array descriptors (``_descriptor``), Python floats as
    the kernel's scalar type, and the launch goes to torch's current stream. On CPU each thread replays
    its own launch of the kernel, recorded once (``wp.launch(record_cmd=True)``): the new dimensions and
    arguments are written straight into its argument struct and the kernel's entry point is called
    (``_CpuLaunch``), which skips nearly all of ``wp.launch``'s per-call work.
    """
    command = _command(kernel, dim, args, device, None)
    if command is not None:
        command.launch()


def _command(kernel, dim, args: list, device: torch.device, slot):
    """``launch_tensors`` up to the launch: on CPU the calling thread's recorded launch for (the concrete
    kernel, ``slot``) with ``dim`` and ``args`` set, or None when it has nothing to run; on CUDA it
    launches and returns None."""
    tensor = torch.Tensor
    scalar = wp.float32
    for a in args:
        if isinstance(a, tensor) and a.dtype == torch.float64:
            scalar = wp.float64
            break
    concrete = overload(kernel, scalar)
    signature = _signature(concrete)
    added = 2 if kernel in _CHUNKED else 0  # items and chunk, added here
    if len(args) + added != len(signature):
        raise TypeError(f"{kernel.key}: expects {len(signature) - added} arguments, got {len(args)}")
    if added:
        chunk = CPU_CHUNK if device.type == "cpu" else 1
        args = [*args, dim, chunk]
        dim = -(-dim // chunk)
    for a, (name, arg, array, dtype, ndim) in zip(args, signature):
        if isinstance(a, tensor):
            if not array or _TORCH_TO_WARP.get(a.dtype) is not dtype or a.dim() != ndim:
                raise TypeError(
                    f"{kernel.key}: argument {name} expects {arg}, got a {a.dtype} tensor of {a.dim()} dims"
                )
        elif array:
            raise TypeError(f"{kernel.key}: argument {name} expects {arg}, got {type(a).__name__}")
    if device.type != "cpu":
        stream = wp.stream_from_torch(device)
        inputs = _warp_inputs(args, signature)
        wp.launch(concrete, dim=dim, inputs=inputs, device=wp.device_from_torch(device), stream=stream)
        return None
    if (dim if isinstance(dim, int) else math.prod(dim)) <= 0:
        return None
    commands = _THREAD.__dict__.setdefault("commands", {})
    key = (concrete, slot)
    command = commands.get(key)
    if command is None:
        recorded = wp.launch(
            concrete, dim=dim, inputs=_warp_inputs(args, signature), device="cpu", record_cmd=True
        )
        command = _CpuLaunch.of(recorded, signature)
        commands[key] = command
        if command is recorded:  # replayed through Warp's own Launch (see _CpuLaunch.of)
            return command
    if isinstance(command, _CpuLaunch):
        command.set(dim, args)
    else:
        command.set_dim(dim)
        for i, a in enumerate(_warp_inputs(args, signature)):
            command.set_param_at_index_from_ctype(i, a)
    return command


def _warp_inputs(args: list, signature: list) -> list:
    """The arguments as ``wp.launch`` takes them: tensors as descriptors, Python floats as the kernel's
    scalar type."""
    inputs = []
    for a, (_, arg, _, _, _) in zip(args, signature):
        if isinstance(a, torch.Tensor):
            a = _descriptor(a)
        elif isinstance(a, float):
            a = arg(a)
        inputs.append(a)
    return inputs


_ARRAY_FORMAT = f"QQ{_MAX_DIMS}i{_MAX_DIMS}iHH"  # array_t: data, grad, shape, byte strides, ndim, flags
_NO_DIMS = [(0,) * (_MAX_DIMS - n) for n in range(_MAX_DIMS + 1)]  # the unused shape and stride entries
_SCALARS = {"i": "i", "I": "I", "l": "q", "L": "Q", "q": "q", "Q": "Q", "f": "f", "d": "d", "?": "?"}


class _CpuLaunch:
    """A concrete kernel's CPU launch on one thread, replayed by writing the new arguments straight into
    its argument struct (one ``struct.pack_into``) and calling the kernel's native entry point.

    Warp's own replay (``Launch.set_param_at_index_from_ctype`` per argument, then a new argument struct
    per launch) took 25-80 us of Python per launch here, from a tensor descriptor each and a dozen calls
    per argument; this takes a few. The struct is the one Warp builds for the launch (the fields of
    ``Launch.params``, in the kernel's argument order); the call is the one Warp makes for a CPU launch
    (``hooks.forward(bounds, args)``, which releases the GIL). A kernel with an argument of another kind
    than an array or a plain scalar keeps Warp's replay (``of``).
    """

    def __init__(self, recorded, layout: type, packer: struct.Struct, kinds: list):
        self._recorded = recorded  # holds the module's hooks
        self._hook = recorded.hooks.forward
        self._dims = recorded.kernel.adj.kernel_dim
        self._bounds = type(recorded.bounds)((1,) * self._dims)
        self._args = layout()
        self._packer, self._kinds = packer, kinds
        self._call = (ctypes.byref(self._bounds), ctypes.byref(self._args))

    @classmethod
    def of(cls, recorded, signature: list):
        """A ``_CpuLaunch`` for Warp's recorded launch ``recorded`` of a kernel with ``signature``
        (``_signature``), or ``recorded`` itself when its arguments are not all arrays and plain scalars
        (or it runs in cooperative blocks)."""
        if recorded.adjoint or getattr(recorded, "block_dim", 1) > 1 or not recorded.hooks.forward:
            return recorded
        if _MAX_DIMS != 4:  # ``set`` writes descriptors of 4 dimensions (Warp's ARRAY_MAX_DIMS)
            return recorded
        fields = [(arg.label, type(p)) for arg, p in zip(recorded.kernel.adj.args, recorded.params[1:])]
        layout = type("Args", (ctypes.Structure,), {"_fields_": fields})
        formats, kinds, end = ["="], [], 0
        for (name, ctype), (_, _, array, dtype, ndim) in zip(fields, signature):
            offset = getattr(layout, name).offset
            formats.append(f"{offset - end}x" if offset > end else "")
            if ctype is _ARRAY_T and array:
                code, kind = _ARRAY_FORMAT, (ndim, wp.types.type_size_in_bytes(dtype))
            else:
                kind = code = _SCALARS.get(getattr(ctype, "_type_", None))
                if code is None or array or struct.calcsize("=" + code) != ctypes.sizeof(ctype):
                    return recorded
            formats.append(code)
            kinds.append(kind)
            end = offset + struct.calcsize("=" + code)
        return cls(recorded, layout, struct.Struct("".join(formats)), kinds)

    def set(self, dim, args: list) -> None:
        """The launch's dimensions and arguments: tensors (of the kernel's dtype and dimensions, as the
        caller checked), Python or Warp scalars."""
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if len(dims) > self._dims:
            key = self._recorded.kernel.key
            raise ValueError(f"{key}: {len(dims)} launch dimensions for a kernel of {self._dims}")
        dims += (1,) * (self._dims - len(dims))
        threads = math.prod(dims)
        if threads >= 2**31:
            raise ValueError(f"{self._recorded.kernel.key}: {threads} threads, more than wp.tid() indexes")
        for i, extent in enumerate(dims):
            self._bounds.shape[i] = extent
        self._bounds.size = threads
        values = []
        for a, kind in zip(args, self._kinds):
            if kind.__class__ is tuple:  # an array: address, shape and byte strides, rank (1-d, 2-d first)
                (n, size), shape, st = kind, a.shape, a.stride()
                if n == 1:
                    values += (a.data_ptr(), 0, shape[0], 0, 0, 0, st[0] * size, 0, 0, 0, 1, 0)
                elif n == 2:
                    values += (a.data_ptr(), 0, *shape, 0, 0, st[0] * size, st[1] * size, 0, 0, 2, 0)
                elif n == 3:
                    values += (a.data_ptr(), 0, *shape, 0, st[0] * size, st[1] * size, st[2] * size, 0, 3, 0)
                else:
                    strides = [size * k for k in st]
                    values += (a.data_ptr(), 0, *shape, *_NO_DIMS[n], *strides, *_NO_DIMS[n], n, 0)
            elif kind in "fd":
                values.append(float(a))
            elif kind == "?":
                values.append(bool(a))
            else:
                values.append(int(a))
        self._packer.pack_into(self._args, 0, *values)

    def launch(self) -> None:
        self._hook(*self._call)


def run_launches(device: torch.device, module: str | Sequence[str], parts: Sequence[Sequence]) -> None:
    """Each part's steps in order, the parts at the same time (``run``). A step is a launch
    ``(kernel, dim, args)`` (as ``launch_tensors``) or a callable (e.g. an accumulator's ``zero_``).

    The arguments of every launch of every part are converted first, on the calling thread: a helper
    then holds the GIL only to start its launches, instead of converting its own while the caller's part
    runs and the run waits for the helper's late start (about 0.1 ms per run here).
    """
    if not parts:
        return
    if device.type != "cpu" or len(parts) == 1:
        for part in parts:
            for step in part:
                step() if callable(step) else launch_tensors(*step, device)
        return
    prepared = []
    for k, part in enumerate(parts):
        steps = []
        for i, step in enumerate(part):
            if callable(step):
                steps.append(step)
                continue
            command = _command(*step, device, (k, i))
            if command is not None:
                steps.append(command.launch)
        prepared.append(steps)

    def job(k):
        for step in prepared[k]:
            step()

    run(device, module, list(range(len(parts))), job)


def _serial_helper() -> None:
    """First thing on a pool thread: its torch ops (views, allocations) run on that thread alone.

    Without it, the first parallel torch op of a helper would give it its own OpenMP team, and with
    more OpenMP threads than cores libgomp stops spin-waiting: every parallel torch op of the process
    (the training loop's included) then wakes its workers through the kernel, ~50% slower here.
    """
    if _openmp():
        torch.get_num_threads()  # torch sets up the thread's OpenMP count on first use; do it first
        torch.set_num_threads(1)


def run(device: torch.device, module: str | Sequence[str] | None, items: Sequence, job: Callable) -> list:
    """``[job(item) for item in items]``: the first item on the calling thread, the others at the same
    time on a thread pool, inside ``torch_serial``.

    ``module`` is the ``__name__`` of the module whose kernels the jobs launch (or a sequence of them): it
    is built and loaded once before the threads start, so they never race on compiling it (None: the jobs
    launch none).
    """
    if len(items) == 1:
        return [job(items[0])]
    with torch_serial(device):
        return _run(device, module, items, job)


def _run(device: torch.device, module: str | Sequence[str] | None, items: Sequence, job: Callable) -> list:
    names = () if module is None else (module,) if isinstance(module, str) else module
    wp_device = wp.device_from_torch(device) if names else None
    for name in names:
        if (name, wp_device.alias) not in _LOADED:
            wp.load_module(sys.modules[name], device=wp_device)
            _LOADED.add((name, wp_device.alias))
    if not _HELPERS_BUSY.acquire(blocking=False):  # in use: another thread's run, or a nested one
        return [job(item) for item in items]
    try:
        while len(_HELPERS) < len(items) - 1:  # the calling thread runs the first item itself
            _HELPERS.append(_Helper(len(_HELPERS)))
        helpers = _HELPERS[: len(items) - 1]
        for helper, item in zip(helpers, items[1:]):
            helper.submit(job, item)
        try:
            first = job(items[0])
        except BaseException:
            _collect(helpers)  # wait for the helpers (they use the caller's tensors), keep the first error
            raise
        outcomes = _collect(helpers)
    finally:
        _HELPERS_BUSY.release()
    results = [first]
    for ok, value in outcomes:
        if not ok:
            raise value
        results.append(value)
    return results


def _collect(helpers: list) -> list:
    """The helpers' outcomes; a helper whose job was not waited for to the end (the wait was
    interrupted) leaves the pool, so that it is never handed a job while it still runs one."""
    outcomes = []
    try:
        for helper in helpers:
            outcomes.append(helper.outcome())
    except BaseException:
        for helper in helpers[len(outcomes) :]:
            if helper in _HELPERS:
                _HELPERS.remove(helper)
        raise
    return outcomes


class _Helper:
    """A pool thread that runs one job at a time, handed over through two locks: cheaper than an executor's
    queue and future (an empty two-part run took ~30 us less here)."""

    def __init__(self, index: int):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._call: tuple | None = None
        self._outcome: tuple = (True, None)
        threading.Thread(target=self._loop, name=f"warp-cpu_{index}", daemon=True).start()

    def submit(self, job: Callable, item) -> None:
        self._call = (job, item)
        self._go.release()

    def outcome(self) -> tuple[bool, Any]:
        """Wait for the job: (True, its result) or (False, the exception it raised)."""
        self._done.acquire()
        outcome, self._outcome = self._outcome, (True, None)
        return outcome

    def _loop(self) -> None:
        _serial_helper()
        while True:
            self._go.acquire()
            job, item = self._call
            self._call = None
            try:
                self._outcome = (True, job(item))
            except BaseException as error:  # handed to the caller, which raises it
                self._outcome = (False, error)
            del job, item
            self._done.release()


def _forget_helpers() -> None:
    """In a forked child: the parent's helper threads do not exist there; new ones start when needed."""
    global _HELPERS_BUSY
    _HELPERS.clear()
    _HELPERS_BUSY = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


REDUCE_MIN_ITEMS = 1 << 16  # elements per thread below which an accumulator sum stays on one thread


class Accumulator:
    """Private accumulators of one gradient, one per part of a launch, and their sum.

    Part k takes its own (``part(k)``, zeroed there: in its job, on its thread, while the other parts
    zero theirs) and ``total()`` adds the ones taken into the first, each thread summing a range of
    elements. Parts add in the same order as a serial sum, so the result does not depend on the thread
    count beyond the parts themselves.

        acc = Accumulator(like, len(parts))
        run(device, module, range(len(parts)), lambda k: launch_on(parts[k], acc.part(k)))
        grad = acc.total()                             # zeros if no part ran
    """

    def __init__(self, like: torch.Tensor, parts: int):
        self._buffers = [like.new_empty(like.shape) for _ in range(max(parts, 1))]
        self._taken = [False] * len(self._buffers)

    def part(self, k: int, zero: bool = True) -> torch.Tensor:
        """Part k's accumulator, zeroed now (``zero=False``: the caller zeroes it before its part runs, e.g.
        as a step of ``run_launches``)."""
        self._taken[k] = True
        return self._buffers[k].zero_() if zero else self._buffers[k]

    def total(self) -> torch.Tensor:
        """The sum of the parts' accumulators (in the first one taken)."""
        return totals([self])[0]


def totals(accumulators: Sequence[Accumulator]) -> list[torch.Tensor]:
    """``[acc.total() for acc in accumulators]`` in one ``run``: each thread sums its range of every one."""
    out, work = [], []
    for acc in accumulators:
        taken = [b for b, t in zip(acc._buffers, acc._taken) if t]
        if not taken:
            out.append(acc._buffers[0].zero_())
            continue
        out.append(taken[0])
        if len(taken) > 1:
            flat = taken[0].view(-1)
            work.append((flat, [b.view(-1) for b in taken[1:]]))
    if not work:
        return out
    device = work[0][0].device
    parts = max(len(split(device, flat.numel(), min_items=REDUCE_MIN_ITEMS)) for flat, _ in work)

    def job(k):
        for flat, rest in work:
            n = flat.numel()
            sl = slice(round(k * n / parts), round((k + 1) * n / parts))
            for r in rest:
                flat[sl].add_(r[sl])

    if parts == 1:
        job(0)
    else:
        run(device, None, list(range(parts)), job)
    return out


class _FanOut(torch.autograd.Function):
    """``n`` aliases of one tensor; their gradients are summed inside ``torch_serial``."""

    @staticmethod
    def forward(ctx, tensor, n):
        ctx.set_materialize_grads(False)  # an alias with no gradient adds nothing
        return tuple(tensor.view_as(tensor) for _ in range(n))

    @staticmethod
    @serial
    def backward(ctx, *grads):
        present = [g for g in grads if g is not None]
        if not present:
            return None, None
        total = present[0] if len(present) == 1 else present[0] + present[1]
        for g in present[2:]:
            total.add_(g)
        return total, None


def fan_out(tensor: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``n`` aliases of ``tensor`` (views, no copy), one per consumer, whose gradients are summed on one
    thread (``torch_serial``).

    When one tensor feeds several autograd nodes, the engine adds up their gradients itself, with
    torch's parallel ops when the tensor is large; each such op leaves torch's OpenMP worker spinning
    for milliseconds on the core that the next Warp part needs (see ``torch_serial``). Give each
    consumer its own alias and the sum happens here instead. Without gradients the aliases are plain
    views.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not (torch.is_grad_enabled() and tensor.requires_grad):
        return tuple(tensor.view_as(tensor) for _ in range(n))
    return _FanOut.apply(tensor, n)
