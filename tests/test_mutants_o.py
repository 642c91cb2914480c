"""Behaviour pinned down for survivors of mutation sample 4 (mutmut over the autograd
engine, the synthetic data sets, shards, torch checkpoint loading and the cpu
convolutions): each test checks something no test of the suite checked before, against an
independent reference (NumPy, PyTorch's documented semantics, or values worked out by
hand)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.data.datasets.synthetic import ring
from dlcore.data.shards import write_shards

# ---- autograd -----------------------------------------------------------------------------


def test_second_backward_error_names_retain_graph_and_the_first_backward() -> None:
    """A second backward through freed buffers says how to avoid it, as PyTorch's error
    does: "... pass retain_graph=True to the first backward() if you need to backward
    twice"."""
    a = dlcore.tensor([1.0, 2.0], requires_grad=True)
    y = (a * a).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"retain_graph=True to the first backward\(\) "
                                           r"if you need to backward twice$"):
        y.backward()


def test_next_functions_has_no_edge_for_an_input_without_grad() -> None:
    """(a * b).grad_fn.next_functions: an edge for a (requires_grad) and none for b (a
    constant), as in PyTorch, where b's entry is (None, 0); b gets no grad accumulator."""
    a = dlcore.tensor([1.0, 2.0], requires_grad=True)
    b = dlcore.tensor([3.0, 4.0])
    fn = (a * b).grad_fn
    assert fn.next_functions[0] is not None
    assert fn.next_functions[1] is None
    assert b._accum is None


# ---- synthetic data sets and shards -------------------------------------------------------


def test_ring_with_one_mode_puts_every_point_in_mode_zero() -> None:
    """ring(n, modes=1) is allowed (modes >= 1): one Gaussian at angle 0, i.e. centred on
    (radius, 0), every label 0."""
    ds = ring(50, modes=1, radius=2.0, std=0.01, seed=3)
    x, mode = ds.tensors[0].numpy(), ds.tensors[1].numpy()
    assert x.shape == (50, 2)
    np.testing.assert_array_equal(mode, np.zeros(50, np.int64))
    np.testing.assert_allclose(x.mean(axis=0), [2.0, 0.0], atol=0.01)


def test_write_shards_with_shard_size_one_writes_one_row_per_shard(tmp_path: Path) -> None:
    """shard_size=1 is a positive int: 3 rows make 3 shards."""
    assert write_shards(tmp_path, {"x": np.arange(3, dtype=np.float32)}, shard_size=1) == 3


# ---- torch checkpoints --------------------------------------------------------------------


def test_torch_checkpoint_whose_data_pkl_is_not_listed_first_loads(tmp_path: Path) -> None:
    """The pickle is archive/data.pkl wherever it stands in the zip: with archive/version
    and archive/byteorder written before it, {"a": 1} still loads."""
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
    assert dlcore.load(path) == {"a": 1}


# ---- cpu convolution ----------------------------------------------------------------------


def _conv2d_reference(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """Direct grouped convolution, stride 1, no padding, summed in float64."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    y = np.zeros((n, o, h - kh + 1, wd - kw + 1))
    for oc in range(o):
        g = oc // og
        for i in range(kh):
            for j in range(kw):
                for ci in range(cg):
                    y[:, oc] += (w[oc, ci, i, j]
                                 * x[:, g * cg + ci, i:i + h - kh + 1, j:j + wd - kw + 1])
    return y


def test_grouped_conv_with_two_channels_in_and_out_per_group_matches_numpy() -> None:
    """groups=2 with 2 input and 2 output channels per group (neither depthwise nor the
    one-output-per-group case) against a direct NumPy sum."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    got = F.conv2d(dlcore.tensor(x), dlcore.tensor(w), groups=2).numpy()
    np.testing.assert_allclose(got, _conv2d_reference(x, w, 2), rtol=1e-5, atol=1e-5)
