"""CUDA graphs: capture a sequence of device work once, replay it for the cost of one launch.
PyTorch's names, re-exported as ``dlcore.cuda.CUDAGraph``, ``dlcore.cuda.graph`` and
``dlcore.cuda.make_graphed_callables``::

    g = dlcore.cuda.CUDAGraph()
    static_x.copy_(batch)                 # static inputs: the graph reads these arrays
    with dlcore.cuda.graph(g):            # capture: the work is recorded, not run
        loss = step(static_x, static_y)   # forward, backward, optimizer, GradScaler
    for batch, target in loader:
        static_x.copy_(batch); static_y.copy_(target)
        g.replay()                        # the whole step; loss holds this step's value

What a graph freezes: every kernel's arguments, so every address and every host scalar. The
rules that follow are PyTorch's: inputs go through static tensors copied into before each
replay; outputs are the tensors produced during capture, overwritten by each replay; host
code inside the region runs once, at capture (a learning rate or step count kept on the host
stays at its capture value: use a ``capturable=True`` optimizer); and the host may not read
device memory inside capture (``.item()``, ``.numpy()``, ``bool(t)``: a clear error here,
instead of CUDA's invalidated capture). Random ops are refused inside capture: their seed
would be frozen, so every replay would draw the same numbers.

On ``cuda`` this is CUDA's stream capture (CuPy's ``Stream.begin_capture``): the region's
kernels, cuBLAS calls and copies are queued on a side stream that records instead of running;
allocations come from a pool private to the graph, which the graph keeps alive (so replays
write into the same memory, and nothing outside can be handed it); an allocation from
another thread during capture, outside that pool, raises.

On ``emu`` there is no driver to record, so :class:`_EmuCapture` records at dlcore's own
dispatch points: each op's ``Function.forward`` (``autograd.Function.apply``), each backward
node, each gradient accumulation into a leaf, each raw in-place write (``copy_``, ``fill_``,
``add_`` ...) and each kernel launch made outside those. Replay re-runs them in order on the
same arrays and copies every result into the array the capture produced, so memory is as
static as on a GPU and graph code is tested here. To keep "capture does not run the work"
true, the contents of every array that existed before capture and was written during it are
restored when capture ends. The emulation is faithful where the region is pure device work;
an op computed outside these points (a raw NumPy expression on ``.array``) is not replayed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

import itertools

from . import autograd, cuda_blas, kernels, random
from .ops.philox_cuda import PhiloxStream
from .device import Device, capturing, get_default_device, replaying
from .tensor import Tensor

__all__ = ["CUDAGraph", "graph", "graph_pool_handle", "is_current_stream_capturing",
           "make_graphed_callables"]


def _root(a: Any) -> Any:
    while getattr(a, "base", None) is not None and isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _copy_into(dst: Any, src: Any, what: str) -> None:
    """Write a replayed result ``src`` into the array the capture produced, ``dst``."""
    if dst is src or dst is None:
        return
    if isinstance(dst, Tensor):
        _copy_into(dst._data, src._data if isinstance(src, Tensor) else src, what)
    elif isinstance(dst, np.ndarray):
        src = np.asarray(src)
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise RuntimeError(f"CUDA graph replay: {what} produced shape {src.shape} "
                               f"{src.dtype} at replay, {dst.shape} {dst.dtype} at capture; "
                               "a graph needs the same shapes every time")
        if dst.flags.writeable:
            np.copyto(dst, src)
        elif not np.may_share_memory(dst, src):
            # a read-only broadcast view (expand, a mean's gradient) of a small array made at
            # capture: refresh that array from the replay's, viewed the same way
            rd, rs = _root(dst), _root(src)
            if dst.strides != src.strides or rd.shape != rs.shape or not rd.flags.writeable:
                raise RuntimeError(f"CUDA graph replay: {what} returned a read-only view "
                                   "that cannot be refreshed in place")
            np.copyto(rd, rs)
    elif isinstance(dst, tuple | list):
        for d, s in zip(dst, src):
            _copy_into(d, s, what)


class _EmuCapture:
    """The recorder of one capture on ``emu`` (module docstring): a list of replay closures
    and the pre-capture contents of the arrays the capture wrote."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.thread = threading.get_ident()
        self.depth = 0  # > 0 while a recorded unit runs: its inner ops are part of it
        self.units: list[tuple[int, Callable[[], None]]] = []  # (stream mark, replay)
        self.produced: set[int] = set()  # ids of root arrays made during capture
        self.keep: list[Any] = []  # the produced arrays, alive as long as the graph
        self.saved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.rng: PhiloxStream | None = None  # the graph's stream (set at begin)

    def _mark(self) -> int:
        """Where the graph's random stream stands before a unit: the unit's draws replay
        from there (a recorded launch keeps its offset; a re-run op draws again)."""
        return 0 if self.rng is None else self.rng.consumed

    def recording(self, dev: Device) -> bool:
        return self.depth == 0 and dev is self.device and threading.get_ident() == self.thread

    # ---- memory: what capture must give back untouched -------------------------------
    def _before_write(self, *arrays: Any) -> None:
        for a in arrays:
            if isinstance(a, np.ndarray):
                r = _root(a)
                if id(r) not in self.produced and id(r) not in self.saved:
                    self.saved[id(r)] = (r, r.copy())

    def _produced(self, out: Any) -> None:
        for a in out if isinstance(out, tuple | list) else (out,):
            if isinstance(a, np.ndarray):
                r = _root(a)
                if id(r) not in self.saved:
                    self.produced.add(id(r))
                    self.keep.append(r)

    def restore(self) -> None:
        for root, copy in self.saved.values():
            np.copyto(root, copy)
        self.saved.clear()

    def _run(self, fn: Callable[[], Any]) -> Any:
        self.depth += 1
        try:
            return fn()
        finally:
            self.depth -= 1

    # ---- the recording points --------------------------------------------------------
    def forward(self, fn: autograd.Function, arrays: tuple, options: dict) -> Any:
        """``fn.forward(*arrays, **options)``, recorded (autograd.Function.apply)."""
        c0 = self._mark()
        self._before_write(*arrays, *[v for v in options.values()
                                      if isinstance(v, np.ndarray)])
        out = self._run(lambda: _normalise(fn.forward(*arrays, **options)))
        self._produced(out)
        name = type(fn).__name__

        def replay() -> None:
            state = dict(fn.__dict__)
            new = _normalise(fn.forward(*arrays, **options))
            _copy_into(out, new, name)
            # what forward kept on self for backward: back into the captured arrays, which
            # the recorded backward nodes read
            for key, old in state.items():
                now = fn.__dict__.get(key)
                if now is not old and isinstance(old, np.ndarray | tuple | list | Tensor):
                    _copy_into(old, now, f"{name}.{key}")
                    fn.__dict__[key] = old
        self.units.append((c0, replay))
        return out

    def backward(self, node: autograd.Function, gouts: tuple) -> Any:
        """``node.backward(*gouts)``, recorded (the backward engine)."""
        c0 = self._mark()
        grads_in = tuple([None if g is None else g._data for g in gouts])
        result = self._run(lambda: node.backward(*gouts))
        single = type(result) is not tuple
        results = (result,) if single else result
        arrays = tuple([None if r is None else r._data for r in results])
        self._produced(arrays)
        dev, name = node.device, type(node).__name__

        def replay() -> None:
            if node._saved:  # replays follow the captured order of in-place writes
                node._versions = tuple([t._version[0] for t in node._saved])
            with autograd.no_grad():
                new = node.backward(*[None if a is None else Tensor._make(a, dev)
                                      for a in grads_in])
            new = (new,) if type(new) is not tuple else new
            for dst, src in zip(arrays, new):
                if dst is not None and src is not None:
                    _copy_into(dst, src._data, f"{name} backward")
        self.units.append((c0, replay))
        return result

    def accumulate(self, node: autograd.AccumulateGrad, grad: Tensor) -> None:
        """A leaf's gradient accumulation, recorded as the copy or add it came to."""
        leaf = node.leaf
        before = None if leaf.grad is None else leaf.grad._data
        slot = leaf._grad_slot
        self._before_write(before if before is not None else
                           None if slot is None else slot.view)
        self._run(lambda: node.accumulate(grad))
        assert leaf.grad is not None
        after, src = leaf.grad._data, grad._data
        if after is before:  # in place: grad += g
            self.units.append((0, lambda: np.add(after, src, out=after)))  # type: ignore[arg-type]
            return
        self._produced(after)  # a new gradient array (a slot's view is saved, not new)
        if before is None:  # the first gradient: copied (into the slot, or a new array)
            self.units.append((0, lambda: np.copyto(after, src)))
        else:  # create_graph: a new sum
            prev = before
            self.units.append((0, lambda: np.add(prev, src, out=after)))

    def raw(self, fn: Callable[[], Any], writes: Any) -> Any:
        """Raw array work (autograd.device_work), re-run at replay."""
        c0 = self._mark()
        self._before_write(*writes)
        out = self._run(lambda: _normalise(fn()))
        self._produced(out)

        def replay() -> None:
            _copy_into(out, _normalise(fn()), getattr(fn, "__qualname__", "device work"))
        self.units.append((c0, replay))
        return out

    def write(self, dst: np.ndarray, src: Any, casting: Any) -> None:
        """A raw in-place write ``dst[...] = src`` (Tensor.copy_, fill_, add_ ...)."""
        self._before_write(dst)
        np.copyto(dst, src, casting=casting)
        self.units.append((0, lambda: np.copyto(dst, src, casting=casting)))

    def launch(self, kernel: Callable[..., Any], grid: tuple, block: tuple, args: tuple,
               shared_mem: int) -> None:
        """A kernel launch outside any recorded op (an optimizer's step, GradScaler's)."""
        self._before_write(*args)
        kernel(grid, block, args, shared_mem=shared_mem)
        self.units.append((0, lambda: kernel(grid, block, args, shared_mem=shared_mem)))


def _normalise(out: Any) -> Any:
    if isinstance(out, np.generic):
        return np.asarray(out)
    if type(out) is tuple:
        return tuple([np.asarray(o) if isinstance(o, np.generic) else o for o in out])
    return out


_serials = itertools.count(1)
_state = threading.local()  # .capture: the CUDAGraph capturing in this thread, if any


def _capture_device(device: Any) -> Device:
    if device is not None:
        dev = Device(device)
    else:
        default = get_default_device()
        dev = default if default.runs_kernels else Device("cuda")
    if not dev.runs_kernels:
        raise RuntimeError(f"CUDA graphs capture work on a cuda (or emu) device, got {dev}")
    if dev.type == "cuda" and dev.index is None:
        dev = Device("cuda", int(dev.xp.cuda.runtime.getDevice()))
    return dev


class CUDAGraph:
    """One captured sequence of device work (``torch.cuda.CUDAGraph``)."""

    def __init__(self) -> None:
        self._device: Device | None = None
        self._emu: _EmuCapture | None = None
        self._cuda: Any = None  # cupy.cuda.Graph
        self._pool: Any = None
        self._stream: Any = None
        self._captured = False
        self._capturing = False
        self._rng: PhiloxStream | None = None

    def capture_begin(self, pool: Any = None, device: Any = None) -> None:
        if self._captured or self._capturing:
            raise RuntimeError("CUDAGraph.capture_begin: this graph has already been "
                               "captured; call reset() first or use a new CUDAGraph")
        if getattr(_state, "capture", None) is not None:
            raise RuntimeError("CUDAGraph.capture_begin: a capture is already under way in "
                               "this thread (captures do not nest)")
        dev = _capture_device(device)
        if dev in capturing:
            raise RuntimeError(f"CUDAGraph.capture_begin: {dev} is already being captured")
        self._device = dev
        # the graph's own random stream: its key is the seed and the graph's serial number
        self._rng = PhiloxStream(dev, (random.initial_seed() or 0, next(_serials)))
        random._streams[dev] = self._rng
        if dev.type == "emu":
            self._emu = _EmuCapture(dev)
            self._emu.rng = self._rng
            autograd._capture = self._emu
            kernels.capture_hooks[dev] = self._emu
        else:
            self._begin_cuda(dev, pool)
        capturing[dev] = threading.get_ident()
        _state.capture = self
        self._capturing = True

    def _begin_cuda(self, dev: Device, pool: Any) -> None:
        cp = dev.xp
        dev.synchronize()  # work queued before capture runs before it, as PyTorch does
        with dev.use():
            cuda_blas.prepare(cp)  # the cuBLAS workspace exists before capture (cudaMalloc)
            self._pool = pool if pool is not None else cp.cuda.MemoryPool()
            self._stream = cp.cuda.Stream(non_blocking=True)
            self._allocator = cp.cuda.using_allocator(self._pool.malloc)
            self._allocator.__enter__()
            self._stream.__enter__()
            self._stream.begin_capture()

    def capture_end(self) -> None:
        if not self._capturing:
            raise RuntimeError("CUDAGraph.capture_end: no capture under way")
        dev = self._device
        assert dev is not None
        try:
            assert self._rng is not None
            self._rng.advance()  # the graph's last node: the next replay draws anew
            random._streams.pop(dev, None)
            if self._emu is not None:
                autograd._capture = None
                kernels.capture_hooks.pop(dev, None)
                self._emu.restore()
            else:
                with dev.use():
                    try:
                        self._cuda = self._stream.end_capture()
                    finally:
                        self._stream.__exit__(None, None, None)
                        self._allocator.__exit__(None, None, None)
                self._cuda.upload()
        finally:
            capturing.pop(dev, None)
            _state.capture = None
            self._capturing = False
        self._captured = True

    def replay(self) -> None:
        """Run the captured work again (on the current stream, on ``cuda``)."""
        if not self._captured:
            raise RuntimeError("CUDAGraph.replay: nothing has been captured (use "
                               "'with dlcore.cuda.graph(g):' first)")
        if self._emu is not None:
            dev, rng = self._device, self._rng
            assert dev is not None and rng is not None
            random._streams[dev] = rng
            replaying.add(dev)  # the re-run ops skip their host checks, as captured
            try:
                for mark, unit in self._emu.units:
                    rng.consumed = mark  # a re-run op draws at the offsets it had
                    unit()
            finally:
                random._streams.pop(dev, None)
                replaying.discard(dev)
        else:
            assert self._device is not None
            with self._device.use():
                self._cuda.launch()

    def reset(self) -> None:
        """Forget the captured work and free the graph's memory."""
        if self._capturing:
            raise RuntimeError("CUDAGraph.reset: a capture is under way")
        self._emu = self._cuda = self._pool = self._stream = None
        self._captured = False

    def pool(self) -> Any:
        """The graph's memory pool, to share with another graph's capture (``pool=``)."""
        return self._pool

    @property
    def device(self) -> Device | None:
        return self._device

    def num_recorded(self) -> int:
        """How many work units an ``emu`` capture recorded (for tests and debugging)."""
        return 0 if self._emu is None else len(self._emu.units)


class graph:
    """``with dlcore.cuda.graph(g):`` captures the block into ``g`` (``torch.cuda.graph``).
    ``device`` picks the device to capture on: by default the default device when it runs
    kernels (``emu``, ``cuda``), else the current CUDA device."""

    def __init__(self, cuda_graph: CUDAGraph, pool: Any = None, stream: Any = None,
                 capture_error_mode: str = "global", device: Any = None) -> None:
        if stream is not None:
            raise NotImplementedError("graph: stream= is not supported; dlcore captures on a "
                                      "side stream of its own")
        if capture_error_mode not in ("global", "thread_local", "relaxed"):
            raise ValueError(f"graph: capture_error_mode must be 'global', 'thread_local' or "
                             f"'relaxed', got {capture_error_mode!r}")
        self.cuda_graph, self.pool, self.device = cuda_graph, pool, device

    def __enter__(self) -> CUDAGraph:
        self.cuda_graph.capture_begin(pool=self.pool, device=self.device)
        return self.cuda_graph

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.cuda_graph.capture_end()
        if exc_type is not None:  # a failed capture leaves nothing to replay
            self.cuda_graph.reset()


def graph_pool_handle(device: Any = None) -> Any:
    """A memory pool that several graphs' captures can share (``pool=``)."""
    dev = _capture_device(device)
    return dev.xp.cuda.MemoryPool() if dev.type == "cuda" else None


def is_current_stream_capturing(device: Any = None) -> bool:
    """Whether a graph capture is under way on ``device`` (by default: in this thread)."""
    if device is None:
        return getattr(_state, "capture", None) is not None
    return Device(device) in capturing


class _Graphed(autograd.Function):
    """The autograd node of a graphed callable: forward replays the forward graph, backward
    the backward graph, each through its static tensors."""

    def forward(self, *arrays: Any, entry: Any) -> Any:
        self.entry = entry
        for static, a in zip(entry.static_inputs, arrays):
            if static._data is not a:  # the call's inputs (parameters are the static ones)
                static._data[...] = a
        entry.fwd.replay()
        # the static outputs themselves, as PyTorch: the next call overwrites them
        outs = tuple([o._data for o in entry.static_outputs])
        return outs if len(outs) > 1 else outs[0]

    def backward(self, *grads: Tensor) -> tuple[Tensor | None, ...]:
        entry = self.entry
        for static, g in zip(entry.static_grad_outputs, grads):
            if static is not None:
                if g is None:
                    static._data[...] = 0
                else:
                    static._data[...] = g._data
        entry.bwd.replay()
        return tuple([None if g is None else Tensor._make(g._data, g.device)
                      for g in entry.static_grad_inputs])


class _Entry:
    """What a graphed callable replays: its two graphs and their static tensors."""

    static_inputs: tuple[Tensor, ...]
    static_outputs: tuple[Tensor, ...]
    static_grad_outputs: tuple[Tensor | None, ...]
    static_grad_inputs: tuple[Tensor | None, ...]
    fwd: CUDAGraph
    bwd: CUDAGraph


def make_graphed_callables(callables: Any, sample_args: Any, num_warmup_iters: int = 3,
                           allow_unused_input: bool = False, device: Any = None) -> Any:
    """Graphed versions of ``callables`` (modules or functions; one, or a tuple): their
    forward and backward are each captured once with ``sample_args`` and replayed on every
    call (``torch.cuda.make_graphed_callables``). Later calls must pass tensors of the
    sample shapes and dtypes; the callable's parameters are static (updated in place by an
    optimizer, never replaced)."""
    single = not isinstance(callables, tuple)
    if single:
        callables, sample_args = (callables,), (sample_args,)
    out = []
    for fn, args in zip(callables, sample_args):
        args = tuple(args) if isinstance(args, tuple | list) else (args,)
        if not all(isinstance(a, Tensor) for a in args):
            raise TypeError("make_graphed_callables: sample_args must be Tensors")
        params = tuple(fn.parameters()) if hasattr(fn, "parameters") else ()
        out.append(_graph_one(fn, args, params, num_warmup_iters, allow_unused_input,
                              device))
    return out[0] if single else tuple(out)


def _graph_one(fn: Any, args: tuple, params: tuple, warmup: int, allow_unused: bool,
               device: Any) -> Callable[..., Any]:
    if hasattr(fn, "_forward_hooks") and (fn._forward_hooks or fn._forward_pre_hooks):
        raise RuntimeError("make_graphed_callables: modules with hooks cannot be graphed "
                           "(the hooks would run only at capture)")
    dev = _capture_device(device if device is not None else args[0].device)
    entry = _Entry()
    entry.static_inputs = tuple(a.detach().clone().requires_grad_(a.requires_grad)
                                for a in args) + params
    needs = [t for t in entry.static_inputs if t.requires_grad]

    def run() -> tuple[Tensor, ...]:
        o = fn(*entry.static_inputs[:len(args)])
        return (o,) if isinstance(o, Tensor) else tuple(o)

    for _ in range(warmup):  # kernels compiled, caches filled, before capture
        outs = run()
        diff = [o for o in outs if o.requires_grad]
        if diff and needs:
            autograd.grad(diff, needs, [o.detach() * 0 + 1 for o in diff],
                          allow_unused=True)
    entry.fwd = CUDAGraph()
    with graph(entry.fwd, device=dev):
        entry.static_outputs = run()
    entry.static_grad_outputs = tuple(o.detach().clone() if o.requires_grad else None
                                      for o in entry.static_outputs)
    entry.bwd = CUDAGraph()
    diff_out = [o for o in entry.static_outputs if o.requires_grad]
    grads_for_out = [g for g in entry.static_grad_outputs if g is not None]
    with graph(entry.bwd, device=dev):
        got = autograd.grad(diff_out, needs, grads_for_out, allow_unused=allow_unused) \
            if diff_out and needs else ()
    by_id = {id(t): g for t, g in zip(needs, got)}
    entry.static_grad_inputs = tuple(by_id.get(id(t)) for t in entry.static_inputs)
    n_args = len(args)

    def graphed(*call_args: Tensor) -> Any:
        if len(call_args) != n_args:
            raise TypeError(f"graphed callable: expected {n_args} arguments, got "
                            f"{len(call_args)}")
        for a, s in zip(call_args, entry.static_inputs):
            if a.shape != s.shape or a.dtype != s.dtype or a.device != s.device:
                raise RuntimeError(f"graphed callable: argument of shape {tuple(a.shape)} "
                                   f"{a.dtype} on {a.device}; the graph was captured for "
                                   f"{tuple(s.shape)} {s.dtype} on {s.device}")
        return _Graphed.apply(*call_args, *entry.static_inputs[n_args:], entry=entry)
    return graphed

