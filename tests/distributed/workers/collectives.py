"""Every collective against its definition, on each rank (run under mpiexec -n N).

Rank r's inputs are drawn from a generator seeded with r, so every rank can compute every
other rank's inputs and hence the expected result. A failed check raises; the excepthook of
init_process_group then aborts the job with a non-zero status. Prints "ok <check>" lines.
"""

from __future__ import annotations

import numpy as np

import dlcore
import dlcore.distributed as dist
from dlcore.data import DistributedSampler
from dlcore.distributed import ReduceOp

dist.init_process_group(timeout=30)  # backend=None: NCCL where usable, else MPI
R, W = dist.get_rank(), dist.get_world_size()
GPU = dlcore.cuda.is_available() and dist.is_nccl_available()
assert dist.get_backend() == ("nccl" if GPU else "mpi"), dist.get_backend()
SHAPE = (3, 5)
REDUCE = {ReduceOp.SUM: np.sum, ReduceOp.PRODUCT: np.prod, ReduceOp.MIN: np.min,
          ReduceOp.MAX: np.max, ReduceOp.AVG: lambda a, axis: np.sum(a, axis) / W}


def inputs(rank: int, dtype: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(rank)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(-2, 2, shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(-5, 6, shape).astype(dtype)


def everyone(dtype: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.stack([inputs(r, dtype, shape) for r in range(W)])


def ok(name: str) -> None:
    if R == 0:
        print("ok", name, flush=True)


def close(got: np.ndarray, want: np.ndarray, dtype: str, what: str) -> None:
    rtol = {"float16": 2e-3, "float32": 1e-6}.get(dtype, 1e-12)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(got, want.astype(dtype), rtol=rtol, atol=rtol, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


# all_reduce: every op on every dtype it applies to
for dtype in ("float16", "float32", "float64", "int32", "int64"):
    for op, fn in REDUCE.items():
        if op is ReduceOp.AVG and dtype.startswith("int"):
            continue
        t = dlcore.tensor(inputs(R, dtype))
        dist.all_reduce(t, op=op)
        want = fn(everyone(dtype).astype("float64" if dtype == "float16" else dtype), axis=0)
        close(t.numpy(), want, dtype, f"all_reduce {op} {dtype}")
ok("all_reduce float/int ops")
for op, fn in ((ReduceOp.BAND, np.bitwise_and), (ReduceOp.BOR, np.bitwise_or),
               (ReduceOp.BXOR, np.bitwise_xor)):
    t = dlcore.tensor(inputs(R, "int64"))
    dist.all_reduce(t, op)
    close(t.numpy(), fn.reduce(everyone("int64"), axis=0), "int64", f"all_reduce {op}")
t = dlcore.tensor(inputs(R, "bool"))
dist.all_reduce(t)  # a sum of bools is their "or"
close(t.numpy(), everyone("bool").any(axis=0), "bool", "all_reduce bool")
ok("all_reduce bitwise and bool")

# in place on a non-contiguous view: the base sees the result
base = dlcore.tensor(inputs(R, "float64", (5, 3)))
view = base.t()
dist.all_reduce(view)
close(base.numpy(), everyone("float64", (5, 3)).sum(0), "float64", "all_reduce of a view")
# the emulator device holds NumPy arrays: MPI reads them in place
t = dlcore.tensor(inputs(R, "float32"), device="emu")
dist.all_reduce(t, ReduceOp.MAX)
close(t.numpy(), everyone("float32").max(0), "float32", "all_reduce on emu")
ok("all_reduce views and emu")

# broadcast from every source
for src in range(W):
    t = dlcore.tensor(inputs(R, "float32"))
    dist.broadcast(t, src=src)
    close(t.numpy(), inputs(src, "float32"), "float32", f"broadcast src={src}")
    n = dlcore.tensor(inputs(R, "int64", (7,)))
    dist.broadcast(n, src)
    close(n.numpy(), inputs(src, "int64", (7,)), "int64", f"broadcast int src={src}")
ok("broadcast")

# all_gather: out[i] is rank i's tensor
for dtype in ("float32", "int64"):
    outs = [dlcore.zeros(*SHAPE, dtype=dtype) for _ in range(W)]
    mine = dlcore.tensor(inputs(R, dtype))
    dist.all_gather(outs, mine)
    for i, out in enumerate(outs):
        close(out.numpy(), inputs(i, dtype), dtype, f"all_gather[{i}] {dtype}")
    close(mine.numpy(), inputs(R, dtype), dtype, "all_gather leaves the input")
ok("all_gather")

# reduce_scatter: rank r gets op over ranks of their input_list[r]
for op in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MAX, ReduceOp.MIN):
    parts = [dlcore.tensor(inputs(R * W + j, "float64")) for j in range(W)]
    out = dlcore.zeros(*SHAPE, dtype="float64")
    dist.reduce_scatter(out, parts, op=op)
    want = REDUCE[op](np.stack([inputs(r * W + R, "float64") for r in range(W)]), axis=0)
    close(out.numpy(), want, "float64", f"reduce_scatter {op}")
ok("reduce_scatter")

# async_op: Work and its Future
t = dlcore.tensor(inputs(R, "float64"))
work = dist.all_reduce(t, async_op=True)
assert work is not None
assert work.wait() and work.is_completed()
close(t.numpy(), everyone("float64").sum(0), "float64", "async all_reduce")
t = dlcore.tensor(inputs(R, "float64"))
work = dist.all_reduce(t, ReduceOp.AVG, async_op=True)
assert work is not None
value = work.get_future().then(lambda fut: fut.value()[0] * 2).wait()
close(value.numpy(), everyone("float64").mean(0) * 2, "float64", "future then")
works = [dist.broadcast(dlcore.tensor(inputs(R, "float32")), src=s, async_op=True)
         for s in range(W)]  # several in flight at once
assert all(w is not None and w.wait() for w in works)
ok("async_op")

# barrier, objects, and the group's view of the sampler
dist.barrier()
assert dist.barrier(async_op=True).wait()  # type: ignore[union-attr]
objs: list = [{"rank": R, "tag": "x" * R}, R] if R == 1 % W else [None, None]
dist.broadcast_object_list(objs, src=1 % W)
assert objs == [{"rank": 1 % W, "tag": "x" * (1 % W)}, 1 % W], objs
sampler = DistributedSampler(range(10), shuffle=False)
assert (sampler.num_replicas, sampler.rank) == (W, R)
padded = list(range(10)) + list(range((-10) % W))  # padding repeats indices from the start
assert list(sampler) == padded[R::W], (list(sampler), padded)
parts = [dlcore.zeros(len(sampler), dtype="int64") for _ in range(W)]
dist.all_gather(parts, dlcore.tensor(list(sampler), dtype="int64"))
covered = np.concatenate([p.numpy() for p in parts])
assert set(covered.tolist()) == set(range(10)) and len(covered) == len(sampler) * W
ok("barrier, broadcast_object_list, sampler from the group")

# argument errors are raised before any communication (so every rank raises alike)
for bad, call in [("ValueError", lambda: dist.all_gather([dlcore.zeros(2)], dlcore.zeros(2))
                   if W > 1 else dist.broadcast(dlcore.zeros(2), src=W)),
                  ("TypeError", lambda: dist.all_reduce(dlcore.zeros(2, dtype="int64"),
                                                        ReduceOp.AVG)),
                  ("ValueError", lambda: dist.broadcast(dlcore.zeros(2), src=-1)),
                  ("TypeError", lambda: dist.all_reduce(np.zeros(2)))]:
    try:
        call()
    except Exception as exc:
        assert type(exc).__name__ == bad, (bad, exc)
    else:
        raise AssertionError(f"expected {bad}")
ok("argument errors")

try:
    dist.init_process_group("mpi")
except RuntimeError as exc:
    assert "twice" in str(exc)
dist.destroy_process_group()
assert not dist.is_initialized()
ok(f"done on {W} ranks")
