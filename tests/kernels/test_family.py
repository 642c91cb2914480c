"""The kernel-family selector: one policy for which (family, device, dtype) runs what, one
C-type table, and the same clear TypeError from every family for a dtype it has no path for."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dlcore
from dlcore.kernels import CTYPES, ctype, families
from dlcore.ops import conv_cpu, conv_cuda
from dlcore.ops.conv import CONV2D
from dlcore.ops.rnn import rnn_layer

EMU, CPU = dlcore.device("emu"), dlcore.device("cpu")


def test_every_family_is_declared_once_with_checks() -> None:
    names = [f.name for f in families()]
    assert len(set(names)) == len(names)
    assert {"conv2d", "optimizer update", "pool2d", "rnn_cell"} <= set(names)
    for family in families():
        assert family.checks, f"{family.name} declares no dlcore check case"


def test_selector_picks_kernels_on_kernel_devices_and_numpy_on_cpu() -> None:
    assert CONV2D.select(EMU, np.float32) is conv_cuda
    assert CONV2D.select(CPU, np.float32) is conv_cpu
    assert CONV2D.select(CPU, np.float16) is conv_cpu  # NumPy computes in float16


def test_one_ctype_table() -> None:
    assert ctype(np.float32) == "float" and ctype(np.float64) == "double"
    assert ctype(np.float16) == "__half"
    assert set(CTYPES) == {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
    with pytest.raises(TypeError, match="no CUDA kernel element type for int32"):
        ctype(np.int32)


def _half(shape: tuple[int, ...]) -> dlcore.Tensor:
    return dlcore.ones(*shape, device=EMU).half()


def _sgd_step() -> None:
    p = dlcore.nn.Parameter(_half((3,)))
    p.grad = _half((3,))
    dlcore.optim.SGD([p], lr=0.1, momentum=0.9).step()


# Families without __half kernels (conv2d and pooling have them: tests/ops/test_conv_tc.py,
# tests/ops/test_pool_kernels.py)
FLOAT16_CALLS = {
    "lstm": lambda: rnn_layer(_half((3, 2, 4)), _half((2, 5)), _half((2, 5)), _half((20, 4)),
                              _half((20, 5)), None, None, "lstm"),
    "sgd_step": _sgd_step,
}


@pytest.mark.parametrize("op", list(FLOAT16_CALLS))
def test_float16_without_kernel_gets_the_same_clear_error(op: str) -> None:
    """No family-specific surprise (a KeyError, a bare TypeError, a silent NumPy fallback):
    the same message naming the op, the dtype, the device and what is supported."""
    pattern = (rf"^{op}: dtype float16 is not supported on device emu; the [\w ]+ kernels "
               r"take float32, float64$")
    with pytest.raises(TypeError, match=pattern):
        FLOAT16_CALLS[op]()


def test_float16_optimizer_error_leaves_parameters_unchanged() -> None:
    p = dlcore.nn.Parameter(_half((4,)))
    p.grad = _half((4,))
    with pytest.raises(TypeError, match=re.escape("sgd_step: dtype float16")):
        dlcore.optim.SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p.numpy(), np.ones(4, np.float16))
