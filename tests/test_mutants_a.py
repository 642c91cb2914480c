"""Behaviour pinned down for mutation-testing survivors (mutmut over autograd, ops, optim,
io and data): each test checks something no test of the suite checked before, against an
independent reference (NumPy, a plain loop, or values worked out by hand)."""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.data import ShardDataset, write_shards
from dlcore import io
from dlcore.data import datasets as builtin_datasets
from dlcore.device import Device
from dlcore.ops import conv as conv_ops

# ---- autograd -----------------------------------------------------------------------------


def test_inplace_change_of_saved_output_error_tells_how_to_fix_it() -> None:
    """The error for a saved output changed in place names the op, the output, the version
    and the fix (clone() before changing it in place)."""
    x = dlcore.tensor(np.zeros(2), requires_grad=True)
    y = x.sigmoid()
    y.add_(1.0)
    with pytest.raises(RuntimeError, match=r"^Sigmoid: .*\(output 0 of this op\) was modified "
                       r"by an in-place operation .*\(version 1, expected 0\); clone\(\) it "
                       r"before changing it in place$"):
        y.sum().backward()


# ---- data ---------------------------------------------------------------------------------


def test_ring_of_zero_points_is_an_empty_dataset() -> None:
    """ring(0) is allowed (n >= 0) and gives empty (0, 2) points and (0,) modes; n < 0
    raises naming n."""
    ds = builtin_datasets.ring(0)
    assert len(ds) == 0
    points, modes = (t.numpy() for t in ds.tensors)
    assert points.shape == (0, 2) and points.dtype == np.float32
    assert modes.shape == (0,) and modes.dtype == np.int64
    with pytest.raises(ValueError, match="ring: need n >= 0 .*got n=-1"):
        builtin_datasets.ring(-1)


def test_shard_dataset_default_buffer_holds_1024_samples(tmp_path: Path) -> None:
    """ShardDataset's default shuffle buffer is 1024 samples: the default streams the same
    seeded order as buffer_size=1024 (with more samples than that, so the buffer fills)."""
    n = 1100
    write_shards(tmp_path, {"y": np.arange(n)}, shard_size=n)
    default = ShardDataset(tmp_path, generator=5)
    assert default.buffer_size == 1024
    explicit = ShardDataset(tmp_path, buffer_size=1024, generator=5)
    ids = [int(y) for (y,) in default]
    assert sorted(ids) == list(range(n))
    assert ids == [int(y) for (y,) in explicit]


# ---- io: restricted unpickler of torch checkpoints ----------------------------------------

def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _zip_like_torch(path: Path, payload: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


def _tensor_pickle(tag: bytes, key: bytes) -> bytes:
    """``{"w": _rebuild_tensor_v2(<persistent id (tag, FloatStorage, key, "cpu", 4)>, 0,
    (4,), (1,), False, {})}``, written opcode by opcode."""
    persistent_id = b"(" + tag + b"ctorch\nFloatStorage\n" + key + _text("cpu") + b"I4\ntQ"
    rebuild = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + b"I0\n" +
               b"(I4\nt" + b"(I1\nt" + b"\x89}tR")
    return b"\x80\x02}" + _text("w") + rebuild + b"s."


def test_persistent_ids_other_than_storage_records_are_refused(tmp_path: Path) -> None:
    """A checkpoint's persistent id must be ("storage", <StorageType>, str key, location,
    numel >= 0): another tag, or a key that is not a string, raises UnpicklingError."""
    path = tmp_path / "c.pt"
    storage = {"0": np.arange(4, dtype=np.float32).tobytes()}
    _zip_like_torch(path, _tensor_pickle(_text("storage"), _text("0")), storage)
    assert dlcore.load(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]  # the well-formed one
    for tag, key in ((_text("blob"), _text("0")), (_text("storage"), b"I0\n")):
        _zip_like_torch(path, _tensor_pickle(tag, key), storage)
        with pytest.raises(pickle.UnpicklingError, match="unsupported persistent id"):
            dlcore.load(path)


def test_refused_global_error_says_it_is_like_weights_only(tmp_path: Path) -> None:
    """Refusing a global names it and says dlcore loads like torch.load(weights_only=True)
    and never runs the checkpoint's code."""
    path = tmp_path / "c.pt"
    _zip_like_torch(path, b"\x80\x02cos\nsystem\n.", {})
    with pytest.raises(pickle.UnpicklingError,
                       match=r"global os\.system is not allowed in a checkpoint; .*like "
                             r"torch\.load with weights_only=True\) and never runs a "
                             r"checkpoint's code$"):
        dlcore.load(path)


def test_save_survives_a_stale_temporary_removed_by_another_saver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead writer's temporary that a concurrent save deletes first (between listing and
    removing it) does not make this save fail."""
    path = tmp_path / "c.safetensors"
    stale = tmp_path / ".c.safetensors.999999.0badc0de.tmp"
    stale.write_bytes(b"x" * 100)

    def other_saver_removes_it_first(pid: int) -> bool:
        stale.unlink()
        return False  # its writer is gone

    monkeypatch.setattr(io, "_alive", other_saver_removes_it_first)
    io.save({"epoch": 1}, path)
    assert io.load(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="directory fsync is a POSIX durability step")
def test_save_flushes_the_file_then_its_directory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On POSIX a save is durable: it fsyncs the written file, then (after the rename) the
    directory holding it."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    io.save({"epoch": 1}, tmp_path / "c.safetensors")
    assert synced == ["file", "dir"]


# ---- ops ----------------------------------------------------------------------------------

def test_conv2d_check_cases_use_the_geometry_their_names_state() -> None:
    """The `dlcore check` conv2d cases run a 3x3 kernel: "3x3 pad 1" keeps 9x9 maps, and
    "stride 2 dilation 2 groups 2" (pad 2) gives 5x5 ones."""
    cpu = Device("cpu")
    same = conv_ops.CONV2D.checks["conv2d 3x3 pad 1"](cpu)
    assert same["forward"].shape == (2, 6, 9, 9)
    assert same["grad weight"].shape == (6, 4, 3, 3)
    assert same["grad input"].shape == (2, 4, 9, 9)
    strided = conv_ops.CONV2D.checks["conv2d stride 2 dilation 2 groups 2"](cpu)
    assert strided["forward"].shape == (2, 6, 5, 5)  # (9 + 2*2 - 2*(3-1) - 1) // 2 + 1
    assert strided["grad weight"].shape == (6, 2, 3, 3)


def test_einsum_output_letter_in_no_operand_error() -> None:
    """An output subscript no operand has raises ValueError naming it, the equation and
    why (it appears in no operand)."""
    with pytest.raises(ValueError, match=r"^einsum: output subscript 'k' of 'ij->k' appears "
                                         r"in no operand$"):
        dlcore.einsum("ij->k", dlcore.tensor(np.ones((2, 3))))


def test_gather_with_an_index_smaller_than_the_input_in_other_dims() -> None:
    """gather takes an index smaller than the input in the dims other than ``dim`` (as
    PyTorch): out[i][j] = input[i][index[i][j]]; the gradient scatters back into the
    covered part only."""
    data = np.arange(20.0).reshape(4, 5)
    x = dlcore.tensor(data, requires_grad=True)
    index = np.array([[4, 0], [1, 1], [3, 2]])  # 3 of 4 rows, 2 picks per row
    out = dlcore.gather(x, 1, dlcore.tensor(index))
    want = np.array([[data[i, index[i, j]] for j in range(2)] for i in range(3)])
    np.testing.assert_array_equal(out.numpy(), want)
    out.sum().backward()
    grad = np.zeros((4, 5))
    for i in range(3):
        for j in range(2):
            grad[i, index[i, j]] += 1.0
    np.testing.assert_array_equal(x.grad.numpy(), grad)


def test_norm_over_a_pair_of_dims_defaults_to_frobenius() -> None:
    """linalg.norm with dim a pair and no ord is the Frobenius norm over those dims."""
    data = np.random.default_rng(0).standard_normal((2, 3, 4))
    out = dlcore.linalg.norm(dlcore.tensor(data), dim=(0, 2))
    want = np.sqrt((data ** 2).sum(axis=(0, 2)))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    kept = dlcore.linalg.norm(dlcore.tensor(data), dim=(0, 2), keepdim=True)
    np.testing.assert_allclose(kept.numpy(), want.reshape(1, 3, 1), rtol=1e-12)


def test_svdvals_double_backward_error_names_svdvals() -> None:
    """Backward through svdvals with create_graph=True raises, naming svdvals first."""
    x = dlcore.tensor(np.array([[3.0, 1.0], [0.0, 2.0]]), requires_grad=True)
    s = dlcore.linalg.svdvals(x)
    with pytest.raises(RuntimeError, match=r"^svdvals: double backward \(create_graph=True\) "
                                           r"through singular values is not supported$"):
        s.sum().backward(create_graph=True)


def test_saved_output_reused_by_a_double_backward_graph_is_output_0() -> None:
    """A saved forward output reused by create_graph's backward is linked as output 0 of
    its node (next_functions holds (node, 0), as PyTorch's), and the second derivative
    flows through it: d2/dx2 exp(x) = exp(x)."""
    data = np.array([0.5, -1.0])
    x = dlcore.tensor(data, requires_grad=True)
    y = x.exp()
    (g,) = dlcore.autograd.grad(y.sum(), x, create_graph=True)
    edges = [e for e in g.grad_fn.next_functions if e is not None and e[0] is y.grad_fn]
    assert edges == [(y.grad_fn, 0)]
    (g2,) = dlcore.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(g2.numpy(), np.exp(data), rtol=1e-12)


def test_conv2d_1x1_on_an_empty_batch_has_zero_gradients(device: str) -> None:
    """A 1x1 convolution of an empty batch: empty output, and gradients of the input's
    shape (0, C, H, W) and zero weight and bias gradients, in the input's dtype."""
    x = dlcore.tensor(np.ones((0, 2, 3, 3), np.float32), device=device, requires_grad=True)
    w = dlcore.tensor(np.ones((3, 2, 1, 1), np.float32), device=device, requires_grad=True)
    b = dlcore.tensor(np.ones(3, np.float32), device=device, requires_grad=True)
    y = F.conv2d(x, w, b)
    assert y.shape == (0, 3, 3, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 2, 3, 3) and x.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((3, 2, 1, 1), np.float32))
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros(3, np.float32))


def test_pointwise_losses_take_array_like_targets() -> None:
    """mse_loss and l1_loss take a list or NumPy target (not a Tensor), cast to the input's
    dtype: the same loss and input gradient as with the target as a Tensor."""
    data = np.array([1.0, -2.0, 0.5], np.float32)
    target = [0.0, 1.0, 2.0]
    x = dlcore.tensor(data, requires_grad=True)
    loss = F.mse_loss(x, target)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), (1.0 + 9.0 + 2.25) / 3, rtol=1e-6)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * (data - np.array(target)) / 3, rtol=1e-6)
    l1 = F.l1_loss(x, np.array(target, np.float64))
    assert l1.dtype == np.float32
    np.testing.assert_allclose(l1.item(), (1.0 + 3.0 + 1.5) / 3, rtol=1e-6)


def test_bool_index_gives_a_copy_that_does_not_share_the_version_counter() -> None:
    """x[True] (a new leading dim of 1) is a copy, as in PyTorch: changing it in place
    leaves x and x's saved-for-backward value alone (no in-place error on backward)."""
    data = np.array([0.5, 1.0])
    a = dlcore.tensor(data, requires_grad=True)
    x = a.exp()  # saves its output for backward
    y = x[True]
    assert y.shape == (1, 2)
    y.add_(1.0)
    np.testing.assert_allclose(x.detach().numpy(), np.exp(data), rtol=1e-12)
    x.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), np.exp(data), rtol=1e-12)
