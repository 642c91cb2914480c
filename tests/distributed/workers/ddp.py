"""DistributedDataParallel against one process on the whole batch (run under mpiexec -n N).

Each rank builds its model from its own seed (so the ranks start from different weights),
wraps it (rank 0's weights win) and trains on its slice of a global batch; every rank also
trains, alone, the model of rank 0's seed on the whole batch. The two must end with the same
parameters (float64: to 1e-9). Global batch 12: equal slices for 1, 2, 3, 4 and 6 ranks.
Prints "ok <check>" lines; a failed check raises, and the job aborts.
"""

from __future__ import annotations

import numpy as np

import dlcore
import dlcore.distributed as dist
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.distributed.algorithms.ddp_comm_hooks import default_hooks
from dlcore.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("mpi", timeout=30)
R, W = dist.get_rank(), dist.get_world_size()
N, STEPS = 12, 3
SLICE = slice(R * N // W, (R + 1) * N // W)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6, batch_first=True)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: dlcore.Tensor) -> dlcore.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def batch(kind: str, seed: int = 7) -> tuple[dlcore.Tensor, dlcore.Tensor]:
    rng = np.random.default_rng(seed)
    shape = (N, 1, 8, 8) if kind == "cnn" else (N, 4, 3)
    return dlcore.tensor(rng.normal(size=shape)), dlcore.tensor(rng.integers(0, 5, N))


def build(kind: str, seed: int) -> nn.Module:
    dlcore.manual_seed(seed)
    return (CNN() if kind == "cnn" else LSTMNet()).double()


def optimizer(name: str, params: object) -> dlcore.optim.Optimizer:
    if name == "sgd":
        return dlcore.optim.SGD(params, lr=0.1, momentum=0.9)  # type: ignore[arg-type]
    return dlcore.optim.Adam(params, lr=0.01)  # type: ignore[arg-type]


def params_of(model: nn.Module) -> list[np.ndarray]:
    return [p.numpy().copy() for p in model.parameters()]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float, what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        err = float(np.abs(a - b).max())
        assert err <= tol, f"rank {R}: {what}: parameter {i} differs by {err:.3g} > {tol:g}"


def train(model: nn.Module, opt_name: str, x: dlcore.Tensor, y: dlcore.Tensor) -> None:
    opt = optimizer(opt_name, model.parameters())
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def ranks_agree(arrays: list[np.ndarray]) -> bool:
    flat = dlcore.tensor(np.concatenate([a.ravel() for a in arrays]))
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, dist.ReduceOp.MIN)
    dist.all_reduce(high, dist.ReduceOp.MAX)
    return bool((low.numpy() == high.numpy()).all())


# the same parameters as one process on the whole batch: CNN and LSTM, SGD+momentum and Adam
for kind in ("cnn", "lstm"):
    x, y = batch(kind)
    for opt_name in ("sgd", "adam"):
        model = build(kind, seed=100 + R)
        assert W == 1 or not ranks_agree(params_of(model)), "ranks should start apart"
        ddp = DDP(model, bucket_cap_mb=0.001)  # tiny buckets: several all-reduces overlap
        assert len(ddp.reducer.buckets) > 1
        reference = build(kind, seed=100)  # rank 0's seed
        assert_close(params_of(model), params_of(reference), 0, "broadcast at wrap")
        train(ddp, opt_name, x[SLICE], y[SLICE])
        train(reference, opt_name, x, y)
        assert_close(params_of(model), params_of(reference), 1e-9, f"{kind} {opt_name}")
        assert ranks_agree(params_of(model))
        if R == 0:
            print("ok", kind, opt_name, flush=True)

# an optimizer made before wrapping (its flat buffers hold the parameters) works the same
x, y = batch("cnn")
model, reference = build("cnn", 100 + R), build("cnn", 100)
opt = dlcore.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
opt_ref = dlcore.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
ddp = DDP(model)
for _ in range(STEPS):
    opt.zero_grad()
    opt_ref.zero_grad()
    F.cross_entropy(ddp(x[SLICE]), y[SLICE]).backward()
    F.cross_entropy(reference(x), y).backward()
    opt.step()
    opt_ref.step()
assert_close(params_of(model), params_of(reference), 1e-9, "optimizer before wrapping")
if R == 0:
    print("ok optimizer made before wrapping", flush=True)

# overlap: buckets start while backward still produces gradients (not all at the end)
events: list[str] = []
ddp = DDP(build("cnn", 3), bucket_cap_mb=0.001)
reducer = ddp.reducer
on_gradient, launch = reducer.on_gradient, reducer._launch
reducer.on_gradient = lambda i, g: (events.append("grad"), on_gradient(i, g))[1]
reducer._launch = lambda bucket: (events.append("launch"), launch(bucket))[1]
F.cross_entropy(ddp(x[SLICE]), y[SLICE]).backward()
assert events.count("launch") == len(reducer.buckets) > 1, events
assert events.index("launch") < len(events) - 2 and events[-1] == "launch", events
if R == 0:
    print("ok overlap:", " ".join(events), flush=True)

# no_sync: two micro-batches accumulated (the second one synchronises) equal one big step
model, reference = DDP(build("cnn", 1)), build("cnn", 1)
opt, opt_ref = dlcore.optim.SGD(model.parameters(), lr=0.5), \
    dlcore.optim.SGD(reference.parameters(), lr=0.5)
half = N // W // 2
first, second = slice(SLICE.start, SLICE.start + half), slice(SLICE.start + half, SLICE.stop)
with model.no_sync():
    (F.cross_entropy(model(x[first]), y[first]) / 2).backward()
local = [p.grad.numpy().copy() for p in model.parameters()]  # type: ignore[union-attr]
assert W == 1 or not ranks_agree(local), "no_sync must not communicate"
(F.cross_entropy(model(x[second]), y[second]) / 2).backward()
F.cross_entropy(reference(x), y).backward()
assert_close([p.grad.numpy() for p in model.parameters()],  # type: ignore[union-attr]
             [p.grad.numpy() for p in reference.parameters()], 1e-12, "no_sync gradients")
opt.step()
opt_ref.step()
assert_close(params_of(model), params_of(reference), 1e-12, "no_sync step")
if R == 0:
    print("ok no_sync", flush=True)

# float16 compression of the all-reduce: the same mean to float16's precision
model, reference = DDP(build("cnn", 2)), build("cnn", 2)
model.register_comm_hook(None, default_hooks.fp16_compress_hook)
F.cross_entropy(model(x[SLICE]), y[SLICE]).backward()
F.cross_entropy(reference(x), y).backward()
for p, q in zip(model.parameters(), reference.parameters()):
    assert p.grad is not None and q.grad is not None
    assert p.grad.dtype == np.float64
    np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), atol=2e-3, rtol=2e-3)
assert ranks_agree([p.grad.numpy() for p in model.parameters()])  # type: ignore[union-attr]
if R == 0:
    print("ok fp16_compress_hook", flush=True)

# buffers follow rank 0 (at wrap, and at each training forward); unused parameters
dlcore.manual_seed(R)
net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 5))
net[1].running_mean.array[...] = R  # type: ignore[index]
bn = DDP(net)
assert (net[1].running_mean.numpy() == 0).all()  # type: ignore[index]
assert list(bn.state_dict())[0] == "module.0.weight"  # PyTorch's prefix
bn(x[SLICE].float()).sum().backward()
assert ranks_agree([p.grad.numpy() for p in net.parameters()])  # type: ignore[union-attr]


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x: dlcore.Tensor, use_b: bool) -> dlcore.Tensor:
        return self.a(x) + (self.b(x) if use_b else 0)


dlcore.manual_seed(0)
heads = DDP(TwoHeads(), find_unused_parameters=True)
assert heads.a is heads.module.a  # attributes the wrapper lacks come from the module
xs = dlcore.ones(2, 3)
heads(xs, use_b=R == 0).sum().backward()  # b is used on rank 0 only
b_grad = heads.module.b.weight.grad
assert b_grad is not None and np.allclose(b_grad.numpy(), 2 / W), b_grad
heads.zero_grad()
heads(xs, use_b=False).sum().backward()  # b is used by no rank: its .grad stays None
assert heads.module.b.weight.grad is None
strict = DDP(TwoHeads())
strict(xs, use_b=False).sum().backward()
try:
    strict(xs, use_b=False)
except RuntimeError as exc:
    assert "b.weight" in str(exc) and "find_unused_parameters" in str(exc), exc
else:
    raise AssertionError("a parameter without gradient must be reported")
cast = DDP(nn.Linear(3, 2)).double()
try:
    cast(xs.double())
except RuntimeError as exc:
    assert "cast the module before wrapping it" in str(exc), exc
else:
    raise AssertionError("a module cast after wrapping must be refused")
if R == 0:
    print("ok buffers, state_dict, unused parameters, cast after wrapping", flush=True)
dist.destroy_process_group()
