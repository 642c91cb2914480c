"""PyTorch checkpoints: ``dlcore.load`` reads ``torch.save`` zip files without torch, and
its restricted unpickler refuses every global but tensor rebuilders and plain containers.

torch is a test-only tool here (never a dependency): these tests skip without it, except
the ones that build zip files by hand.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore import io
from dlcore.models.lenet import LeNet
from dlcore.tensor import Tensor


def _torch():  # noqa: ANN202 - the torch module, or a skip
    return pytest.importorskip("torch")


def _as_numpy(t) -> np.ndarray:  # noqa: ANN001 - a torch tensor
    if t.dtype == _torch().bfloat16:  # NumPy has no bfloat16: compare the 16-bit words
        return t.view(_torch().int16).numpy().view(dlcore.bfloat16)
    return t.detach().numpy()


def _assert_same(back: Tensor, expected) -> None:  # noqa: ANN001 - a torch tensor
    assert isinstance(back, Tensor) and str(back.device) == "cpu"
    want = _as_numpy(expected)
    assert back.dtype == want.dtype and back.shape == want.shape
    assert back.numpy().tobytes() == np.ascontiguousarray(want).tobytes()  # bit for bit


def test_torch_state_dict_loads_exactly(tmp_path: Path) -> None:
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                                torch.nn.Flatten(), torch.nn.Linear(12, 4))
    model(torch.randn(5, 2, 4, 4))  # running statistics and num_batches_tracked move
    state = model.state_dict()
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    extras = {
        "half": torch.randn(3, 5).half(), "bf16": torch.randn(7).bfloat16(),
        "transposed": base.t(), "row": base[2], "strided": base[1:, ::2],
        "ints": torch.arange(-4, 4, dtype=torch.int32), "bytes": torch.arange(5).byte(),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8), "mask": base > 10,
        "int16": torch.tensor([-3, 9], dtype=torch.int16), "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "extras": extras, "epoch": 3, "name": "run-1",
                "history": [0.5, 0.25], "pair": (1, "two"), "blob": b"\x00\xff"}, path)
    back = dlcore.load(path)
    assert back["epoch"] == 3 and back["name"] == "run-1" and back["history"] == [0.5, 0.25]
    assert back["pair"] == (1, "two") and back["blob"] == b"\x00\xff"
    assert isinstance(back["model"], collections.OrderedDict)
    assert list(back["model"]) == list(state)
    for key, value in state.items():
        _assert_same(back["model"][key], value)
    assert back["model"]["1.num_batches_tracked"].dtype == np.int64
    for key, value in extras.items():
        _assert_same(back["extras"][key], value)
    assert back["extras"]["bf16"].dtype == dlcore.bfloat16


def test_torch_shared_storage_and_parameters(tmp_path: Path) -> None:
    torch = _torch()
    base = torch.arange(10.0)
    param = torch.nn.Parameter(torch.ones(2, 2))
    torch.save(collections.OrderedDict(a=base[3:7], b=base, p=param), tmp_path / "c.pth")
    back = dlcore.load(tmp_path / "c.pth")
    assert back["a"].tolist() == [3.0, 4.0, 5.0, 6.0] and back["b"].tolist() == list(range(10))
    # each tensor owns a copy (torch.load would give views of one storage)
    back["a"].numpy()[0] = -1.0
    assert back["b"].tolist()[3] == 3.0
    assert back["p"].requires_grad and not back["b"].requires_grad
    assert back["p"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_torch_checkpoint_from_file_object_and_map_location(tmp_path: Path) -> None:
    torch = _torch()
    buffer = BytesIO()
    torch.save({"w": torch.arange(3.0)}, buffer)
    buffer.seek(0)
    assert dlcore.load(buffer)["w"].tolist() == [0.0, 1.0, 2.0]
    (tmp_path / "c.pt").write_bytes(buffer.getvalue())
    with open(tmp_path / "c.pt", "rb") as f:
        assert str(dlcore.load(f, map_location="emu")["w"].device) == "emu"


def test_lenet_trained_in_torch_loads_into_dlcore(tmp_path: Path) -> None:
    torch = _torch()
    tnn = torch.nn
    torch.manual_seed(1)
    # the same module tree and names as dlcore.models.LeNet
    net = tnn.Module()
    net.features = tnn.Sequential(tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                                  tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(),
                                  tnn.MaxPool2d(2))
    net.classifier = tnn.Sequential(tnn.Flatten(), tnn.Dropout(0.25), tnn.Linear(256, 128),
                                    tnn.ReLU(), tnn.Dropout(0.25), tnn.Linear(128, 10))
    torch.save(net.state_dict(), tmp_path / "lenet.pt")
    model = LeNet()
    model.load_state_dict(dlcore.load(tmp_path / "lenet.pt"))
    model.eval()
    net.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = net.classifier(net.features(torch.from_numpy(x))).numpy()
    with dlcore.no_grad():
        got = model(dlcore.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _zip_like_torch(path: Path, payload: bytes, storages: dict[str, bytes] | None = None,
                    byteorder: bytes = b"little") -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", b"3\n")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _zip_like_torch(path, pickle.dumps({"w": _Exploit(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os)\.system is not allowed"):
        dlcore.load(path)
    assert not marker.exists()
    _zip_like_torch(path, pickle.dumps(collections.Counter("ab"), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="collections.Counter is not allowed"):
        dlcore.load(path)


# Torch-free checks write torch's pickles opcode by opcode (pickle itself would insist on
# importing the globals it names).
def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _ints(*values: int) -> bytes:
    return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"  # MARK, INTs, TUPLE


def _tensor_pickle(storage: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """``{"w": _rebuild_tensor_v2(<storage "0">, offset, size, stride, False, {})}``."""
    persistent_id = (b"(" + _text("storage") + b"ctorch\n" + storage.encode() + b"\n" +
                     _text("0") + _text("cpu") + b"I%d\n" % numel + b"tQ")
    rebuild = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + b"I%d\n" % offset +
               _ints(*size) + _ints(*stride) + b"\x89}tR")
    return b"\x80\x02}" + _text("w") + rebuild + b"s."  # PROTO, EMPTY_DICT, SETITEM, STOP


def test_hand_written_checkpoint_big_endian_and_strides(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    values = np.arange(12, dtype=np.float32)
    _zip_like_torch(path, _tensor_pickle("FloatStorage", 12, 1, (3, 2), (4, 1)),
                    {"0": values.astype(">f4").tobytes()}, byteorder=b"big")
    w = dlcore.load(path)["w"]
    assert w.dtype == np.float32
    assert w.tolist() == [[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]
    _zip_like_torch(path, _tensor_pickle("BFloat16Storage", 3, 0, (3,), (1,)),
                    {"0": np.array([1.5, -2, 0.25], dlcore.bfloat16).tobytes()})
    w = dlcore.load(path)["w"]
    assert w.dtype == dlcore.bfloat16 and w.numpy().astype(np.float32).tolist() == [1.5, -2, .25]


def test_damaged_torch_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    storage = {"0": np.zeros(4, np.float32).tobytes()}
    _zip_like_torch(path, _tensor_pickle("FloatStorage", 4, 2, (2, 2), (2, 1)), storage)
    with pytest.raises(io.CheckpointError, match="overruns its storage of 4"):
        dlcore.load(path)
    _zip_like_torch(path, _tensor_pickle("FloatStorage", 8, 0, (8,), (1,)), storage)
    with pytest.raises(io.CheckpointError, match="holds 16 bytes, expected 32"):
        dlcore.load(path)
    _zip_like_torch(path, _tensor_pickle("FloatStorage", 4, 0, (4,), (1,)), {})
    with pytest.raises(io.CheckpointError, match="not a readable PyTorch checkpoint"):
        dlcore.load(path)  # the storage file is missing
    _zip_like_torch(path, _tensor_pickle("ComplexFloatStorage", 4, 0, (4,), (1,)), storage)
    with pytest.raises(pickle.UnpicklingError, match="torch.ComplexFloatStorage is not allowed"):
        dlcore.load(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(io.CheckpointError, match="without <name>/data.pkl"):
        dlcore.load(path)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(io.CheckpointError, match="not a readable PyTorch checkpoint"):
        dlcore.load(path)


def test_legacy_torch_format_asks_for_a_re_save(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001))
    with pytest.raises(io.CheckpointError, match="legacy.*re-save it with a newer torch"):
        dlcore.load(path)
    with pytest.raises(io.CheckpointError, match="legacy"):
        dlcore.load(BytesIO(path.read_bytes()))


def test_pickle_cannot_change_the_rebuilders(tmp_path: Path) -> None:
    """BUILD sets attributes of what the pickle holds: ours are immutable."""
    path = tmp_path / "c.pt"
    slot_state = b"(N}" + _text("__defaults__") + b"(I1\nts" + b"t"  # (None, {...})
    storage_type = b"ctorch\nFloatStorage\n"
    storage = b"(" + _text("storage") + storage_type + _text("0") + _text("cpu") + b"I4\ntQ"
    for target in (b"ctorch._utils\n_rebuild_tensor_v2\n", storage_type, storage):
        for state in (slot_state, b"}" + _text("array") + b"I1\ns"):
            _zip_like_torch(path, b"\x80\x02" + target + state + b"b.",
                            {"0": np.zeros(4, np.float32).tobytes()})
            with pytest.raises(io.CheckpointError, match="AttributeError"):
                dlcore.load(path)
    storage = {"0": np.zeros(4, np.float32).tobytes()}
    _zip_like_torch(path, _tensor_pickle("FloatStorage", 4, 0, (4,), (1,)), storage)
    assert dlcore.load(path)["w"].tolist() == [0.0] * 4
