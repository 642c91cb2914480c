"""Behaviour pinned down for survivors of mutation sample 5 (letter u): error messages of
einsum, masked_fill, the binary cross entropies and transpose; topk with k = 0, split of an
empty dim, transpose of a 1-d tensor past its dims and the LSTM check case's objective. Each
test checks something no test of the suite checked before, against NumPy, PyTorch's
documented semantics, a slow obvious implementation or values worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.ops._check import seeded_arrays
from dlcore.ops.rnn import RNN_CELL

CPU = Device("cpu")
EMU = Device("emu")


# ---- error messages naming the op and the shapes ---------------------------------------------


def test_einsum_with_a_repeated_output_letter_names_the_equation() -> None:
    """'ij->ii' repeats i in the output (torch refuses it too): a ValueError naming einsum and
    the equation."""
    with pytest.raises(ValueError, match=r"^einsum: output subscripts of 'ij->ii' repeat a "
                                         r"letter$"):
        dlcore.einsum("ij->ii", dlcore.ones(2, 2))


def test_masked_fill_with_a_float_mask_says_it_must_be_bool() -> None:
    """A float mask is a TypeError naming masked_fill (torch: a bool mask is required)."""
    with pytest.raises(TypeError, match=r"^masked_fill: mask must be a bool tensor$"):
        dlcore.masked_fill(dlcore.ones(2), dlcore.ones(2), 0.0)


@pytest.mark.parametrize("op", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("as_list", [False, True])
def test_binary_cross_entropy_target_of_another_shape_names_both_sizes(op: str,
                                                                        as_list: bool) -> None:
    """torch's wording: 'target size (...) must be the same as input size (...)', as a
    ValueError, both shapes printed, for a tensor target and for a nested-list one (converted
    first, then refused), with no broadcasting warning before it."""
    x = dlcore.full((2, 3), 0.5)
    target = [[1.0, 0.0, 1.0]] if as_list else dlcore.ones(1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be raised instead of the ValueError
        with pytest.raises(ValueError, match=rf"^{op}: target size \(\(1, 3\)\) must be the "
                                             r"same as input size \(\(2, 3\)\)$"):
            getattr(F, op)(x, target)


def test_transpose_first_dim_out_of_range_names_transpose() -> None:
    """dim0 = 5 of a 2-d tensor: an IndexError naming transpose, the dim and the rank."""
    with pytest.raises(IndexError, match=r"^transpose: dim 5 is out of range for a tensor "
                                         r"with 2 dims$"):
        dlcore.transpose(dlcore.ones(3, 2), 5, 0)


# ---- shape ops at their edges ----------------------------------------------------------------


def test_transpose_of_a_vector_to_dim_1_is_out_of_range() -> None:
    """A 1-d tensor has dims 0 and -1 only: transpose(0, 1) is an IndexError as in torch
    ('Dimension out of range (expected to be in range of [-1, 0], but got 1)'); transpose(0, -1)
    returns the vector unchanged."""
    v = dlcore.tensor([1.0, 2.0, 3.0])
    with pytest.raises(IndexError, match=r"^transpose: dim 1 is out of range for a tensor "
                                         r"with 1 dims$"):
        dlcore.transpose(v, 0, 1)
    np.testing.assert_array_equal(dlcore.transpose(v, 0, -1).numpy(), [1.0, 2.0, 3.0])


def test_split_of_an_empty_dim_is_one_empty_chunk() -> None:
    """torch.split(torch.ones(0, 2), 2) is one (0, 2) chunk: splitting nothing gives one empty
    piece, not a piece of one row."""
    got = dlcore.split(dlcore.ones(0, 2), 2)
    assert [tuple(t.shape) for t in got] == [(0, 2)]


def test_topk_with_k_zero_is_empty() -> None:
    """k = 0 is in range (torch.topk(x, 0) gives empty values and indices)."""
    got = dlcore.topk(dlcore.tensor([3.0, 1.0, 2.0]), 0)
    assert tuple(got.values.shape) == tuple(got.indices.shape) == (0,)


# ---- recurrent kernels ----------------------------------------------------------------------


def _lstm_reference(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray,
                    w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray) -> tuple:
    """PyTorch's LSTM (gates i, f, g, o stacked by rows), step by step in float64."""
    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    x, h, c, w_ih, w_hh, b_ih, b_hh = (a.astype(np.float64)
                                        for a in (x, h, c, w_ih, w_hh, b_ih, b_hh))
    ys = []
    for xt in x:
        i, f, g, o = np.split(xt @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def test_lstm_check_case_objective_includes_the_cell_state() -> None:
    """The 'lstm cell' dlcore check case differentiates y + sum(h_n) + sum(c_n) (every output,
    so every gradient path is compared): its forward equals that, from a float64 LSTM on the
    same seeded inputs."""
    T, N, I, H = 6, 3, 4, 5
    shapes = [(T, N, I), (N, H), (N, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = seeded_arrays(3, *shapes)
    y, h_n, c_n = _lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    result = RNN_CELL.checks["lstm cell"](CPU)
    np.testing.assert_allclose(result["forward"], y + h_n.sum() + c_n.sum(), rtol=1e-4,
                               atol=1e-4)
