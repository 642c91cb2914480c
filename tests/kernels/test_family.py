"""The kernel-family selector: one policy for which (family, device, dtype) runs what, one
C-type table, and the same clear TypeError from every family for a dtype it has no path for."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dlcore
from dlcore.kernels import CTYPES, KernelFamily, ctype, families
from dlcore.ops import conv_cpu, conv_cuda
from dlcore.ops.conv import CONV2D
from dlcore.ops.optim import unscale_grads, update
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
    assert ctype(np.float16) == "__half" and ctype(dlcore.bfloat16) == "__nv_bfloat16"
    assert ctype(np.uint16) == "__nv_bfloat16"  # cuda's bfloat16 storage (no tensor dtype)
    assert set(CTYPES) == {np.dtype(np.float16), dlcore.bfloat16, np.dtype(np.float32),
                           np.dtype(np.float64)}
    with pytest.raises(TypeError, match="no CUDA kernel element type for int32"):
        ctype(np.int32)


def test_every_family_has_float16_kernels() -> None:
    """float16 runs on every family's kernels (storage half, arithmetic float)."""
    for family in families():
        assert np.dtype(np.float16) in family.kernel_dtypes, family.name


def test_bfloat16_kernels_where_cheap_and_a_clear_error_elsewhere() -> None:
    """pool2d and the recurrent cells have __nv_bfloat16 kernels; conv2d does not, and says so
    naming the op, the dtype and the device (the cpu path of every family takes bfloat16)."""
    by_name = {f.name: f for f in families()}
    assert {n for n, f in by_name.items() if dlcore.bfloat16 in f.kernel_dtypes} >= {
        "pool2d", "rnn_cell"}
    with pytest.raises(TypeError, match="conv2d: dtype bfloat16 is not supported on device emu"):
        by_name["conv2d"].select(EMU, dlcore.bfloat16, "conv2d")
    for name in ("conv2d", "pool2d", "rnn_cell"):
        assert dlcore.bfloat16 in by_name[name].cpu_dtypes


def _int32(*shape: int) -> dlcore.Tensor:
    return dlcore.tensor(np.ones(shape, np.int32), device=EMU)


def _int32_update() -> None:
    arrays = tuple(np.ones(3, np.int32) for _ in range(5))
    update(EMU, "adam_step", arrays, (1.0, 0.0, 0.1, 0.999, 0.001, 0.01, 1.0, 1e-8), 0)


# int32 has kernels in no family: public calls that reach a selector with it (conv2d and
# pooling refuse integer tensors at their own boundary first, with their own message)
NO_KERNEL_CALLS = {
    "lstm": lambda: rnn_layer(_int32(3, 2, 4), _int32(2, 5), _int32(2, 5), _int32(20, 4),
                              _int32(20, 5), None, None, "lstm"),
    "adam_step": _int32_update,
    "unscale_grads": lambda: unscale_grads(EMU, np.ones(3, np.int32), 0.5,
                                           np.zeros(1, np.int32)),
}
PATTERN = (r"^{op}: dtype int32 is not supported on device emu; the {family} kernels take "
           r"float16, (bfloat16, )?float32, float64$")


@pytest.mark.parametrize("op", list(NO_KERNEL_CALLS))
def test_a_dtype_without_kernels_gets_the_same_clear_error(op: str) -> None:
    """No family-specific surprise (a KeyError, a bare TypeError, a silent NumPy fallback):
    the same message naming the op, the dtype, the device and what is supported."""
    family = "rnn_cell" if op == "lstm" else "optimizer update"
    with pytest.raises(TypeError, match=PATTERN.format(op=op, family=family)):
        NO_KERNEL_CALLS[op]()


@pytest.mark.parametrize("family", families(), ids=lambda f: f.name)
def test_every_family_words_the_error_alike(family: KernelFamily) -> None:
    with pytest.raises(TypeError, match=PATTERN.format(op="some_op", family=family.name)):
        family.select(EMU, np.int32, "some_op")
    with pytest.raises(TypeError, match=r"^some_op: dtype int32 is not supported on device "
                                        r"cpu; the [\w ]+ cpu path takes? float16, "
                                        r"(bfloat16, )?float32, float64$"):
        family.select(CPU, np.int32, "some_op")


def test_a_refused_update_leaves_its_arrays_unchanged() -> None:
    param, grad = np.ones(4, np.int32), np.full(4, 2, np.int32)
    with pytest.raises(TypeError, match=re.escape("sgd_step: dtype int32")):
        update(EMU, "sgd_step", (param, grad, None), (0.5, 0.0, 1.0, 0.0), 0)
    np.testing.assert_array_equal(param, np.ones(4, np.int32))
