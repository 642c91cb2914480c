"""CUDA graphs (dlcore.graphs, dlcore.cuda.CUDAGraph/graph/make_graphed_callables).

On ``emu`` a capture records dlcore's dispatch points and replay re-runs them on the same
arrays; the oracle is eager execution of the same steps, which a faithful replay matches
bit for bit (same kernels, same arrays, same order). ``cuda`` runs the same tests where a
GPU exists (CUDA's own stream capture).
"""

from __future__ import annotations

import numpy as np
import pytest

import dlcore as dl
import dlcore.nn.functional as F
from dlcore import nn

from dlcore.device import device_count
from dlcore.ops import philox_cpu
from dlcore.ops.philox_cuda import PhiloxStream


@pytest.fixture(params=["emu", "cuda"])
def dev(request: pytest.FixtureRequest) -> str:
    """The devices that capture graphs (``cuda`` skipped without a GPU)."""
    if request.param == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    return request.param


def _batches(shape: tuple[int, ...], classes: int, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape).astype(np.float32),
             rng.integers(0, classes, shape[0])) for _ in range(n)]


def _cnn(dev: str) -> nn.Module:
    dl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 4)).to(dev)


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: dl.Tensor) -> dl.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _train_step(model: nn.Module, opt: dl.optim.Optimizer, x: dl.Tensor, y: dl.Tensor,
                clip: bool) -> tuple[dl.Tensor, dl.Tensor]:
    opt.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    correct = (out.argmax(1) == y).sum()  # accumulated on the device, as the trainers do
    return loss, correct


def _eager_and_graphed(dev: str, make: object, shape: tuple[int, ...], clip: bool,
                       warmup: int = 2, steps: int = 5) -> tuple[list, list, list, list]:
    data = _batches(shape, 4, warmup + steps, seed=1)
    model = make(dev)  # type: ignore[operator]
    opt = dl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eager = []
    for x, y in data:
        loss, correct = _train_step(model, opt, dl.tensor(x, device=dev),
                                    dl.tensor(y, device=dev), clip)
        eager.append((loss.item(), correct.item()))
    eager_params = [p.detach().numpy().copy() for p in model.parameters()]

    model = make(dev)  # type: ignore[operator]
    opt = dl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    graphed = []
    for x, y in data[:warmup]:  # the warm-up PyTorch's recipe asks for (optimizer state)
        loss, correct = _train_step(model, opt, dl.tensor(x, device=dev),
                                    dl.tensor(y, device=dev), clip)
        graphed.append((loss.item(), correct.item()))
    static_x = dl.zeros(*shape, device=dev)
    static_y = dl.zeros(shape[0], dtype=dl.int64, device=dev)
    g = dl.cuda.CUDAGraph()
    with dl.cuda.graph(g, device=dev):
        static_loss, static_correct = _train_step(model, opt, static_x, static_y, clip)
    for x, y in data[warmup:]:
        static_x.copy_(dl.tensor(x, device=dev))
        static_y.copy_(dl.tensor(y, device=dev))
        g.replay()
        graphed.append((static_loss.item(), static_correct.item()))
    graphed_params = [p.detach().numpy().copy() for p in model.parameters()]
    return eager, graphed, eager_params, graphed_params


def test_cnn_training_step_replays_as_eager(dev: str) -> None:
    eager, graphed, ep, gp = _eager_and_graphed(dev, _cnn, (5, 1, 8, 8), clip=False)
    assert graphed == eager
    for a, b in zip(ep, gp):
        np.testing.assert_array_equal(a, b)


def test_lstm_training_step_with_clipping_replays_as_eager(dev: str) -> None:
    eager, graphed, ep, gp = _eager_and_graphed(dev, lambda d: (dl.manual_seed(0),
                                                                _Lstm().to(d))[1],
                                                (4, 6, 3), clip=True)
    assert graphed == eager
    for a, b in zip(ep, gp):
        np.testing.assert_array_equal(a, b)


def test_capture_does_not_run_the_work(dev: str) -> None:
    # as on a GPU, capturing records the step: parameters and optimizer state are untouched
    model = _cnn(dev)
    opt = dl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = dl.tensor(_batches((5, 1, 8, 8), 4, 1, 0)[0][0], device=dev)
    y = dl.zeros(5, dtype=dl.int64, device=dev)
    _train_step(model, opt, x, y, clip=False)
    before = [p.detach().numpy().copy() for p in model.parameters()]
    with dl.cuda.graph(dl.cuda.CUDAGraph(), device=dev):
        _train_step(model, opt, x, y, clip=False)
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.detach().numpy())


@pytest.mark.parametrize("read", ["item", "numpy", "bool", "tolist", "cpu"])
def test_host_reads_inside_capture_raise(dev: str, read: str) -> None:
    x = dl.ones(3, device=dev)
    g = dl.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="graph is being captured"):
        with dl.cuda.graph(g, device=dev):
            s = (x * 2).sum()
            {"item": s.item, "numpy": s.numpy, "bool": lambda: bool(s),
             "tolist": s.tolist, "cpu": s.cpu}[read]()
    assert not dl.cuda.is_current_stream_capturing()
    with pytest.raises(RuntimeError, match="nothing has been captured"):
        g.replay()  # the failed capture left nothing behind
    assert (x * 2).sum().item() == 6.0  # and the device works normally again


def test_capture_misuse_raises() -> None:
    g = dl.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="nothing has been captured"):
        g.replay()
    x = dl.ones(2, device="emu")
    with dl.cuda.graph(g, device="emu"):
        assert dl.cuda.is_current_stream_capturing()
        assert dl.cuda.is_current_stream_capturing("emu")
        y = x + 1
        with pytest.raises(RuntimeError, match="already under way"):
            dl.cuda.CUDAGraph().capture_begin(device="emu")
    with pytest.raises(RuntimeError, match="already been captured"):
        g.capture_begin(device="emu")
    with pytest.raises(RuntimeError, match="cuda .or emu. device"):
        dl.cuda.CUDAGraph().capture_begin(device="cpu")
    x.fill_(5.0)
    g.replay()
    np.testing.assert_array_equal(y.numpy(), [6.0, 6.0])
    g.reset()
    with pytest.raises(RuntimeError, match="nothing has been captured"):
        g.replay()


def test_replay_writes_static_outputs_in_place(dev: str) -> None:
    a = dl.tensor([1.0, 2.0, 3.0], device=dev)
    b = dl.tensor([[1.0], [2.0]], device=dev)
    g = dl.cuda.CUDAGraph()
    with dl.cuda.graph(g, device=dev):
        out = (a * b).relu().sum(0) + a.mean()  # broadcast, a reduction's view, in-place
        out.mul_(2.0)
    held = out.array
    for k in range(3):
        a.copy_(dl.tensor([1.0, -2.0, 3.0 * k], device=dev))
        g.replay()
        av, bv = a.numpy(), b.numpy()
        want = 2.0 * (np.maximum(av * bv, 0).sum(0) + av.mean())
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
        assert out.array is held


def test_make_graphed_callables_matches_the_module(dev: str) -> None:
    dl.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dev)
    rng = np.random.default_rng(3)
    sample = dl.tensor(rng.standard_normal((4, 3)).astype(np.float32), device=dev,
                       requires_grad=True)
    graphed = dl.cuda.make_graphed_callables(module, (sample,))
    for _ in range(3):
        x = dl.tensor(rng.standard_normal((4, 3)).astype(np.float32), device=dev,
                      requires_grad=True)
        for p in module.parameters():
            p.grad = None
        ref = module(x)
        (ref * ref).sum().backward()
        want_grads = [p.grad.numpy().copy() for p in module.parameters()]
        want_x = x.grad.numpy().copy()
        for p in module.parameters():
            p.grad = None
        x.grad = None
        out = graphed(x)
        np.testing.assert_array_equal(out.detach().numpy(), ref.detach().numpy())
        (out * out).sum().backward()
        for p, w in zip(module.parameters(), want_grads):
            np.testing.assert_array_equal(p.grad.numpy(), w)
        np.testing.assert_array_equal(x.grad.numpy(), want_x)
    with pytest.raises(RuntimeError, match="captured for"):
        graphed(dl.zeros(5, 3, device=dev))


# ---- graph-safe random numbers (kernels/philox.cu, dlcore.random.PhiloxStream) ------------
def test_philox_twin_is_numpys_philox() -> None:
    # numpy.random.Philox is Philox4x64-10 too; it increments its counter before each block
    for key in [(0, 0), (123456789, 2**64 - 5)]:
        bg = np.random.Philox(key=np.array(key, dtype=np.uint64),
                              counter=np.zeros(4, dtype=np.uint64))
        want = bg.random_raw(20).reshape(5, 4)
        np.testing.assert_array_equal(philox_cpu.philox4x64(np.arange(1, 6), key), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_philox_kernels_match_the_twin(dtype: type) -> None:
    stream = PhiloxStream(dl.device("emu"), (11, 3))
    n = 37  # not a multiple of 4: the last block is partly used
    got = stream.draw("uniform", (n,), -1.0, 4.0, dtype)
    np.testing.assert_array_equal(got, philox_cpu.uniform(0, n, (11, 3), -1.0, 4.0, dtype))
    assert stream.consumed == 10
    got = stream.draw("normal", (n,), 0.5, 2.0, dtype)
    want = philox_cpu.normal(10, n, (11, 3), 0.5, 2.0, dtype)
    # the kernel's log and sincospi are the device's (glibc's on emu): a few ulps apart
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=1e-12)


def test_random_ops_draw_anew_on_every_replay(dev: str) -> None:
    x = dl.ones(64, device=dev)
    g = dl.cuda.CUDAGraph()
    with dl.cuda.graph(g, device=dev):
        dropped = F.dropout(x, 0.5)
        noise = dl.randn(256, device=dev)
    seen = []
    for _ in range(4):
        g.replay()
        d = dropped.numpy()
        assert set(np.unique(d)) <= {0.0, 2.0}
        seen.append((d.copy(), noise.numpy().copy()))
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(seen[i][0], seen[j][0])
            assert not np.array_equal(seen[i][1], seen[j][1])
    allnoise = np.concatenate([s[1] for s in seen])
    assert abs(allnoise.mean()) < 0.15 and abs(allnoise.std() - 1.0) < 0.1  # 1024 draws
    kept = np.mean([s[0] != 0 for s in seen])
    assert 0.4 < kept < 0.6


def test_other_random_ops_inside_capture_raise(dev: str) -> None:
    with pytest.raises(RuntimeError, match="only uniform and normal draws"):
        with dl.cuda.graph(dl.cuda.CUDAGraph(), device=dev):
            dl.randint(0, 5, (3,), device=dev)


def test_batchnorm_step_replays_running_statistics(dev: str) -> None:
    """BatchNorm updates its running statistics in place in forward: a replay must too."""
    def make() -> tuple[nn.Module, dl.optim.Optimizer]:
        dl.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4)).to(dev)
        return m, dl.optim.SGD(m.parameters(), lr=0.05)

    data = _batches((4, 1, 8, 8), 4, 5, seed=2)
    model, opt = make()
    for x, y in data:
        _train_step(model, opt, dl.tensor(x, device=dev), dl.tensor(y, device=dev), False)
    want = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model, opt = make()
    _train_step(model, opt, dl.tensor(data[0][0], device=dev), dl.tensor(data[0][1],
                                                                          device=dev), False)
    sx, sy = dl.zeros(4, 1, 8, 8, device=dev), dl.zeros(4, dtype=dl.int64, device=dev)
    g = dl.cuda.CUDAGraph()
    with dl.cuda.graph(g, device=dev):
        _train_step(model, opt, sx, sy, False)
    for x, y in data[1:]:
        sx.copy_(dl.tensor(x, device=dev))
        sy.copy_(dl.tensor(y, device=dev))
        g.replay()
    got = model.state_dict()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)


def test_captured_ops_skip_host_checks_and_stay_in_bounds(dev: str) -> None:
    """cross_entropy, gather and embedding check their indices on the host when eager; a
    capture cannot read the device (on an H200 the check ended the capture: "the current
    stream is capturing, so D2H transfers are disallowed"), so captured they skip the check,
    and cross_entropy clamps an out-of-range target to a class instead of reading past the
    row. prod's backward takes its zero-safe form there (it cannot look for zeros)."""
    x = dl.randn(4, 3, device=dev, requires_grad=True)
    bad = dl.tensor([0, 2, 1, 7], device=dev)
    with pytest.raises(IndexError, match="target 7 is out of bounds"):
        F.cross_entropy(x, bad)
    emb = dl.randn(5, 2, device=dev)
    with pytest.raises(IndexError, match="out of range"):
        F.embedding(dl.tensor([9], device=dev), emb)
    with pytest.raises(IndexError, match="out of range"):
        dl.gather(x, 1, dl.tensor([[5]] * 4, device=dev))
    p = dl.tensor([2.0, 0.0, 3.0], device=dev, requires_grad=True)
    g = dl.cuda.CUDAGraph()
    with dl.cuda.graph(g, device=dev):
        loss = F.cross_entropy(x, bad)
        loss.backward()
        looked_up = F.embedding(dl.tensor([4, 0], device=dev), emb)
        picked = dl.gather(x, 1, dl.tensor([[2]] * 4, device=dev))
        prod = p.prod()
        prod.backward()
    g.replay()
    clamped = F.cross_entropy(x.detach(), dl.tensor([0, 2, 1, 2], device=dev))  # 7 -> class 2
    np.testing.assert_allclose(loss.item(), clamped.item(), rtol=1e-6)
    assert np.isfinite(x.grad.numpy()).all()
    np.testing.assert_array_equal(looked_up.numpy(), emb.numpy()[[4, 0]])
    np.testing.assert_array_equal(picked.numpy(), x.detach().numpy()[:, [2]])
    assert prod.item() == 0.0
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 6.0, 0.0])
