"""Checkpoints: round trips, map_location, atomic writes under SIGKILL, damaged files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import zlib
from io import BytesIO, StringIO
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import dlcore
from dlcore import io
from dlcore.device import Device, device_count
from dlcore.tensor import Tensor

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]


def _values(dtype: str) -> np.ndarray:
    return (np.arange(-6, 6).reshape(3, 4) % 7 * 1.5).astype(dtype)


def test_round_trip_nested_structure(tmp_path: Path, device: str) -> None:
    big = 2**200 + 12345
    obj = {
        "model": {f"w_{d}": dlcore.tensor(_values(d), device=device) for d in DTYPES},
        "arrays": [_values(d) for d in DTYPES],
        "shapes": (dlcore.tensor(2.5, device=device), np.zeros((0, 3), np.float32)),
        "optimizer": {"state": {0: {"step": 7, "exp_avg": np.ones(4)}}, "lr": 1e-3},
        "plain": [1, -2.5, "text", True, False, None, big, float("inf")],
        "numpy_rng": np.random.default_rng(123).bit_generator.state,
        "scalars": (np.float32(1.25), np.int64(-3)),
        "empty": {"list": [], "tuple": (), "dict": {}},
    }
    path = tmp_path / "ckpt.safetensors"
    io.save(obj, path)
    back = io.load(path)
    assert set(back) == set(obj)
    for d in DTYPES:
        t = back["model"][f"w_{d}"]
        assert isinstance(t, Tensor) and t.dtype == np.dtype(d)
        assert str(t.device) == ("cuda:0" if device == "cuda" else device)  # as PyTorch's
        np.testing.assert_array_equal(t.numpy(), _values(d))
    for arr, d in zip(back["arrays"], DTYPES, strict=True):
        assert type(arr) is np.ndarray and arr.dtype == np.dtype(d)
        np.testing.assert_array_equal(arr, _values(d))
    assert isinstance(back["shapes"], tuple)
    assert back["shapes"][0].shape == () and back["shapes"][0].item() == 2.5
    assert back["shapes"][1].shape == (0, 3)
    assert back["optimizer"]["state"][0]["step"] == 7 and 0 in back["optimizer"]["state"]
    assert back["plain"] == obj["plain"] and back["plain"][6] == big
    assert back["numpy_rng"] == obj["numpy_rng"]
    assert back["scalars"] == obj["scalars"]
    assert type(back["scalars"][0]) is np.float32 and type(back["scalars"][1]) is np.int64
    assert back["empty"] == {"list": [], "tuple": (), "dict": {}}
    assert isinstance(back["empty"]["tuple"], tuple)


def test_requires_grad_and_parameters_round_trip(tmp_path: Path) -> None:
    from dlcore.nn.parameter import Parameter

    io.save({"p": Parameter(dlcore.ones(2)), "x": dlcore.ones(2)}, tmp_path / "c")
    back = io.load(tmp_path / "c")
    assert back["p"].requires_grad and not back["x"].requires_grad


def test_map_location(tmp_path: Path) -> None:
    io.save({"t": dlcore.ones(3, device="emu")}, tmp_path / "c")
    assert io.load(tmp_path / "c")["t"].device is Device("emu")
    assert io.load(tmp_path / "c", map_location="cpu")["t"].device is Device("cpu")


def test_tensor_saved_on_missing_gpu_loads_on_cpu(tmp_path: Path) -> None:
    # A cuda-labelled tensor holding a NumPy array stands in for one saved on a GPU machine.
    fake_gpu_tensor = Tensor._make(np.arange(3.0), Device("cuda:7"))
    io.save({"t": fake_gpu_tensor}, tmp_path / "c")
    t = io.load(tmp_path / "c")["t"]
    expected = "cuda:7" if device_count() > 7 else "cpu"
    assert str(t.device) == expected and t.tolist() == [0.0, 1.0, 2.0]


def test_unsupported_objects_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"obj\['a'\]\[1\]"):
        io.save({"a": [1, {2, 3}]}, tmp_path / "c")
    with pytest.raises(TypeError, match="dict keys"):
        io.save({(1, 2): 3}, tmp_path / "c")
    with pytest.raises(TypeError, match="dtype"):
        io.save({"a": np.array(["x"])}, tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    io.save({"epoch": 1}, path)

    def broken(arrays: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(io.CheckpointError, match=r"c\.safetensors'?: could not be written "
                                                 r"\(OSError: disk full\)"):
        io.save({"epoch": 2}, path)
    assert io.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_write_error_names_the_target_not_the_temporary(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"

    def broken(arrays: dict, filename: str, metadata: dict) -> None:
        raise OSError(f"cannot write {filename}")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(io.CheckpointError) as info:
        io.save({"epoch": 2}, path)
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """Each killed save used to leave its temporary behind (15 kills of a 128 MB save left
    535 MB); the next save removes those whose writer is gone, not a live writer's."""
    path = tmp_path / "c.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".c.safetensors.{int(dead.stdout)}.0badc0de.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".c.safetensors.{os.getppid()}.0123abcd.tmp"
    live.write_bytes(b"in flight")
    other = tmp_path / f".d.safetensors.{int(dead.stdout)}.0badc0de.tmp"  # another target's
    other.write_bytes(b"not ours")
    io.save({"epoch": 1}, path)
    assert not stale.exists() and live.exists() and other.exists()
    assert io.load(path) == {"epoch": 1}


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
import safetensors.numpy
from dlcore import io

real_save_file = safetensors.numpy.save_file

def slow_save_file(arrays, filename, metadata):
    real_save_file(arrays, filename, metadata)
    data = Path(filename).read_bytes()
    Path(filename).write_bytes(data[: len(data) // 2])  # half written ...
    print("writing", flush=True)
    time.sleep(60)  # ... when the process is killed

safetensors.numpy.save_file = slow_save_file
io.save({"epoch": 2, "weights": np.full((1024, 1024), 2.0)}, sys.argv[1])
"""


def test_killed_writer_leaves_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    io.save({"epoch": 1, "weights": np.full((1024, 1024), 1.0)}, path)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER),
                              str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1  # the half-written temporary file exists
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert path.read_bytes() == before
    back = io.load(path)
    assert back["epoch"] == 1 and (back["weights"] == 1.0).all()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.safetensors"
    io.save({"w": np.arange(1000, dtype=np.float32), "epoch": 3}, path)
    return path


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_file_raises_checkpoint_error(checkpoint: Path, keep: int) -> None:
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:keep] if keep >= 0 else data[:-10])
    with pytest.raises(io.CheckpointError, match=str(checkpoint.name)):
        io.load(checkpoint)


def test_garbage_and_bit_flips_raise_checkpoint_error(checkpoint: Path) -> None:
    data = bytearray(checkpoint.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: only the checksum can tell
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(io.CheckpointError, match="corrupted"):
        io.load(checkpoint)
    checkpoint.write_bytes(os.urandom(4096))
    with pytest.raises(io.CheckpointError, match="not a readable safetensors file"):
        io.load(checkpoint)
    assert issubclass(io.CheckpointError, RuntimeError)


def test_foreign_and_damaged_metadata_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "c"
    safetensors.numpy.save_file({"a": np.zeros(2)}, path)
    with pytest.raises(io.CheckpointError, match="not a dlcore checkpoint"):
        io.load(path)
    crc = zlib.crc32(np.zeros(2).tobytes())
    safetensors.numpy.save_file({"0": np.zeros(2)}, path, metadata={
        "dlcore.format": "1", "dlcore.structure": '{"tensor": "9"}',
        "dlcore.crc32": f'{{"0": {crc}}}'})
    with pytest.raises(io.CheckpointError, match="missing tensor entry"):
        io.load(path)
    safetensors.numpy.save_file({}, path, metadata={
        "dlcore.format": "1", "dlcore.structure": '{"list": [1, ', "dlcore.crc32": "{}"})
    with pytest.raises(io.CheckpointError, match="damaged structure"):
        io.load(path)
    safetensors.numpy.save_file({"0": np.zeros(2)}, path, metadata={  # checksums stripped
        "dlcore.format": "1", "dlcore.structure": '{"ndarray": "0"}'})
    with pytest.raises(io.CheckpointError, match="no checksum table"):
        io.load(path)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "absent")


def test_rng_state_resumes_bit_for_bit(tmp_path: Path, device: str) -> None:
    dlcore.manual_seed(11)
    dlcore.randn(7, device=device)
    io.save({"rng": io.get_rng_state()}, tmp_path / "c")
    expected = dlcore.randn(5, device=device).numpy().copy()
    dlcore.manual_seed(999)
    dlcore.randn(3, device=device)
    io.set_rng_state(io.load(tmp_path / "c")["rng"])
    np.testing.assert_array_equal(dlcore.randn(5, device=device).numpy(), expected)


def test_rng_state_restarts_unused_generators_from_seed() -> None:
    dlcore.manual_seed(5)
    state = io.get_rng_state()
    expected = dlcore.rand(4).numpy().copy()
    dlcore.rand(9)
    io.set_rng_state(state)
    np.testing.assert_array_equal(dlcore.rand(4).numpy(), expected)


def test_file_object_round_trip(tmp_path: Path) -> None:
    obj = {"w": dlcore.arange(6).reshape(2, 3), "a": np.ones(2, np.float16), "epoch": 4}
    buffer = BytesIO()
    io.save(obj, buffer)
    buffer.seek(0)
    back = io.load(buffer)
    assert back["epoch"] == 4 and back["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["a"].dtype == np.float16 and back["w"].numpy().flags.writeable
    with open(tmp_path / "c.safetensors", "wb") as f:
        f.write(b"preamble")  # written at the file's position, like torch.save
        io.save(obj, f)
    with open(tmp_path / "c.safetensors", "rb") as f:
        assert f.read(8) == b"preamble"
        assert io.load(f)["epoch"] == 4
    assert io.load(BytesIO((tmp_path / "c.safetensors").read_bytes()[8:]))["epoch"] == 4


def test_file_object_errors_name_the_op_and_argument(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"save: f is a text file object.*'wb'"):
        io.save({}, StringIO())
    with pytest.raises(TypeError, match=r"load: f is a text file object.*'rb'"):
        io.load(StringIO())
    with pytest.raises(TypeError, match=r"save: f must be a path .* with write\(\), got int"):
        io.save({}, 3)
    with pytest.raises(TypeError, match=r"load: f must be a path .* with read\(\), got list"):
        io.load([])
    with pytest.raises(io.CheckpointError, match="<BytesIO>.*not a readable safetensors"):
        io.load(BytesIO(b"garbage" * 10))
    with pytest.raises(io.CheckpointError, match="<BytesIO>.*corrupted"):
        buffer = BytesIO()
        io.save({"w": np.arange(100.0)}, buffer)
        data = bytearray(buffer.getvalue())
        data[-3] ^= 0xFF
        io.load(BytesIO(bytes(data)))
    with open(tmp_path / "c", "wb") as f, pytest.raises(io.CheckpointError,
                                                         match=r"c'?: could not be written"):
        f.close()
        io.save({}, f)


def test_cuda_generator_state_resumes_bit_for_bit_on_emu() -> None:
    """The cuda generator (Philox on the device, PCG64 for index draws) run on the emulator:
    its saved state restores the same numbers. CuPy's RandomState, used before, had no state,
    so a resumed GPU run drew other numbers (test_rng_state_resumes_bit_for_bit[cuda], H200)."""
    from dlcore.device import Device
    from dlcore.random import CudaGenerator

    gen = CudaGenerator(Device("emu"), 11)
    gen.uniform(0.0, 1.0, (7,), np.float32)
    gen.integers(0, 10, (3,))
    state = json.loads(json.dumps(gen.state))  # what a checkpoint holds
    expected = [gen.normal(0.0, 1.0, (5,), np.float32), gen.uniform(-2.0, 2.0, (9,)),
                gen.integers(0, 100, (4,)), gen.permutation(6)]
    other = CudaGenerator(Device("emu"), 999)
    other.uniform(0.0, 1.0, (3,))
    other.state = state
    again = [other.normal(0.0, 1.0, (5,), np.float32), other.uniform(-2.0, 2.0, (9,)),
             other.integers(0, 100, (4,)), other.permutation(6)]
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)
    assert expected[0].dtype == np.float32 and expected[1].dtype == np.float64
    u = gen.uniform(-2.0, 2.0, (20000,), np.float32)
    z = gen.normal(3.0, 0.5, (20000,), np.float32)
    assert u.min() >= -2.0 and u.max() < 2.0 and abs(u.mean()) < 0.05
    assert abs(z.mean() - 3.0) < 0.02 and abs(z.std() - 0.5) < 0.02
