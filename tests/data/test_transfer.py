"""Host-to-device transfer: the CUDA path driven by a fake CuPy, and on a real GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.data import DataLoader, TensorDataset
from dlcore.data.transfer import CudaTransfer, HostTransfer, map_tensors
from dlcore.device import Device, device_count
from dlcore.tensor import Tensor


class _FakeCupy:
    """Just enough of CuPy for CudaTransfer, recording every call in ``log``."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.current_stream = _FakeStream(self, "consumer")
        self.cuda = self  # cp.cuda.X -> self.X
        self.runtime = self  # cp.cuda.runtime.X -> self.X

    def getDevice(self) -> int:  # CuPy's name
        return 1  # another GPU is current, so work for cuda:0 must switch to it

    def Device(self, index: int) -> Any:  # CuPy's name
        fake = self

        class _Ctx:
            def __enter__(self) -> None:
                fake.log.append(("device", index))

            def __exit__(self, *exc: object) -> None:
                fake.log.append(("device-exit", index))

        return _Ctx()

    def Stream(self, non_blocking: bool = False) -> _FakeStream:
        assert non_blocking
        return _FakeStream(self, "side")

    def Event(self, disable_timing: bool = False) -> _FakeEvent:
        return _FakeEvent(self)

    def get_current_stream(self) -> _FakeStream:
        return self.current_stream

    def alloc_pinned_memory(self, nbytes: int) -> bytearray:
        self.log.append(("pinned", nbytes))
        return bytearray(nbytes)

    def empty(self, shape: tuple, dtype: np.dtype) -> _FakeDeviceArray:
        self.log.append(("empty", shape))
        return _FakeDeviceArray(self, shape, dtype)


class _FakeStream:
    def __init__(self, cp: _FakeCupy, name: str) -> None:
        self.cp, self.name = cp, name

    def wait_event(self, event: _FakeEvent) -> None:
        self.cp.log.append(("wait", self.name, event.recorded_on))


class _FakeEvent:
    def __init__(self, cp: _FakeCupy) -> None:
        self.cp, self.recorded_on, self.done = cp, None, False

    def record(self, stream: _FakeStream) -> None:
        self.recorded_on = stream.name
        self.cp.log.append(("record", stream.name))


class _FakeDeviceArray:
    def __init__(self, cp: _FakeCupy, shape: tuple, dtype: np.dtype) -> None:
        self.cp, self.shape, self.dtype, self.host = cp, shape, dtype, None

    def set(self, array: np.ndarray, stream: _FakeStream) -> None:
        self.cp.log.append(("copy", stream.name, array.shape))
        self.host = array


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> _FakeCupy:
    """A fake CuPy as cuda:0's array module for the test (the real one needs a GPU)."""
    fake = _FakeCupy()
    monkeypatch.setattr(Device("cuda:0"), "_xp", fake)
    return fake


def test_cuda_transfer_stages_through_pinned_memory_on_side_stream(cp: _FakeCupy) -> None:
    transfer = CudaTransfer(Device("cuda:0"))
    batch = (dlcore.arange(6).reshape(2, 3), {"y": dlcore.ones(2)}, ["a", "b"])
    cp.log.clear()
    staged = transfer.prepare(batch)
    kinds = [entry[0] for entry in cp.log]
    # all of it inside cuda:0's context (events made there re-enter it, harmlessly)
    assert kinds[0] == "device" and kinds[-1] == "device-exit"
    assert [k for k in kinds if not k.startswith("device")] == [
        "pinned", "empty", "pinned", "empty", "record", "wait", "copy", "copy", "record"]
    # the side stream waits for the consumer's earlier work, copies, then marks the end
    assert ("record", "consumer") in cp.log and ("wait", "side", "consumer") in cp.log
    assert [e[1] for e in cp.log if e[0] == "copy"] == ["side", "side"]
    assert staged.ready.recorded_on == "side"
    x, ys, names = staged.batch
    assert isinstance(x, Tensor) and x.device is Device("cuda:0") and names == ["a", "b"]
    np.testing.assert_array_equal(x.array.host, np.arange(6).reshape(2, 3))
    assert ys["y"].array.host.dtype == np.float32
    assert len(staged.keepalive) == 2  # the pinned buffers the copies read

    cp.log.clear()
    assert transfer.deliver(staged) is staged.batch
    # the consumer's stream waits on the copy
    assert [e for e in cp.log if not e[0].startswith("device")] == [("wait", "consumer", "side")]


def test_cuda_transfer_holds_pinned_buffers_until_copy_done(cp: _FakeCupy) -> None:
    transfer = CudaTransfer(Device("cuda:0"))
    first = transfer.prepare(dlcore.ones(3))
    transfer.deliver(first)
    second = transfer.prepare(dlcore.ones(3))
    transfer.deliver(second)
    assert list(transfer._in_flight) == [first, second]  # copies not finished yet
    first.ready.done = True
    third = transfer.prepare(dlcore.ones(3))
    transfer.deliver(third)
    assert list(transfer._in_flight) == [second, third]


def test_host_transfer_relabels_without_copy() -> None:
    x = dlcore.ones(3)
    moved = HostTransfer(Device("emu")).prepare({"x": x}).batch["x"]
    assert moved.device is Device("emu") and moved.array is x.array
    assert map_tensors((1, [x]), lambda t: 2) == (1, [2])


@pytest.mark.skipif(device_count() == 0, reason="no CUDA device")
def test_loader_on_real_gpu() -> None:
    data = np.random.default_rng(0).standard_normal((257, 5)).astype(np.float32)
    loader = DataLoader(TensorDataset(data), batch_size=64, num_workers=2, device="cuda")
    out = [batch[0] for batch in loader]
    assert all(t.device is Device("cuda:0") for t in out)
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in out]), data)
