"""Recurrent layers as single autograd nodes: one Function runs a whole layer (one direction)
over all time steps, forward and backward through time.

Why one node: a per-step graph of small ops costs Python overhead per step and op, and a
2,000-step sequence would build tens of thousands of nodes. Here each layer (and direction)
is one :class:`RNNLayerFunction` with outputs ``(y, h_n)`` or ``(y, h_n, c_n)``:

* forward: the input projection of all steps in ONE GEMM (biases folded in), then per step one
  GEMM for the hidden projection and one fused cell update: a CUDA kernel from
  ``kernels/rnn_cell.cu`` on ``cuda`` and ``emu`` (:mod:`dlcore.ops.rnn_cuda`), the same math as
  NumPy expressions on ``cpu`` (:mod:`dlcore.ops.rnn_cpu`, the kernels' twin and the tests'
  oracle for them); the kernel family :data:`RNN_CELL` picks one;
* backward: per step one fused cell backward and one GEMM for the recurrent gradient; the
  weight gradients over all steps in one GEMM each at the end.

Saved for backward, the minimum the math needs: activated gates, the state entering each step
(h, and c for LSTM), tanh(c') for LSTM, ``W_hn h + b_hn`` for GRU, the output y for RNN.

Variable lengths: step ``t`` updates sequence ``n`` only where ``t < lengths[n]``; a padded step
keeps the state, outputs zero and passes gradient straight through. The reverse direction walks
``t = T-1 .. 0`` with the same rule, so each sequence starts at its own last valid step, as
PyTorch's packed sequences do.

float16: the cells run the ``__half`` kernels (float arithmetic, one rounding per stored value)
and the NumPy twin computes the same way. The GEMMs around them run in :func:`gemm_dtype`:
float32 on ``cpu`` and ``emu`` (NumPy), cuBLAS's float16 GEMM (float32 accumulation) on
``cuda``; outputs and everything saved for backward stay float16.

Shape letters: T time, N batch, I input size, H hidden size, G gates (RNN 1, LSTM 4, GRU 3).
Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..dtypes import bfloat16
from ..kernels import KernelFamily
from ..kernels.family import FLOAT_DTYPES_BF16
from ..tensor import Tensor
from . import blas_cpu, rnn_cpu, rnn_cuda
from ._check import forward_backward, kwargs_case
from ._util import device_matmul, low_precision

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

# The cell implementations are classes with one per-step interface (see rnn_cpu.Cells).
RNN_CELL = KernelFamily("rnn_cell", rnn_cuda.SOURCE, cpu=rnn_cpu, kernel=rnn_cuda,
                        kernel_dtypes=rnn_cuda.KERNEL_DTYPES, cpu_dtypes=FLOAT_DTYPES_BF16)


def gemm_dtype(xp: Any, dtype: np.dtype) -> np.dtype:
    """The dtype a layer's GEMMs (and the bias sums folded into them) compute in: ``dtype``,
    except float16 on a NumPy device (``cpu``, ``emu``), which computes in float32 and rounds
    each result to float16 once. NumPy has no float16 BLAS: its float16 matmul is a plain loop
    (measured on a 2-core VM: 10x slower than widening to float32 BLAS for 64x4096x64, with
    the same float32 accumulation), and its float16 additions would round the input
    projection again for each bias. On ``cuda``, CuPy's float16 matmul is cuBLAS's, already
    accumulating in float32. NOTE: bfloat16 (ml_dtypes) likewise on NumPy; CuPy has no
    bfloat16 GEMM (see :func:`_check_bfloat16_device`)."""
    if (dtype == np.float16 or dtype == bfloat16) and xp is np:
        return np.dtype(np.float32)
    return np.dtype(dtype)


def _matmul_into(xp: Any, a: Any, b: Any, out: Any, add: Any = None) -> None:
    """``out = a @ b (+ add)``, with ``b`` (and ``add``) already in the GEMM dtype: computed in
    it and rounded into ``out`` once."""
    if b.dtype == out.dtype:
        if isinstance(b, blas_cpu.PackedColumns):  # a recurrent weight, packed once per call
            b.matmul_into(a, out)
        elif xp is np:
            blas_cpu.matmul_into(a, b, out)  # a few rows: OpenBLAS's small path
        else:
            device_matmul(xp, a, b, out)
        if add is not None:
            out += add
        return
    wide = device_matmul(xp, a.astype(b.dtype), b)
    if add is not None:
        wide += add
    xp.copyto(out, wide, casting="same_kind")


def _packed(xp: Any, b: Any, rows: int, dtype: np.dtype) -> Any:
    """``b`` (k, n), a recurrent weight every step multiplies ``rows`` rows by, as
    :class:`blas_cpu.PackedColumns` where OpenBLAS's small path takes its blocks (NumPy, and
    ``b`` already in the state's dtype: float16 states compute wider), else ``b`` itself."""
    if xp is not np or b.dtype != dtype:
        return b
    plan = blas_cpu.pack_plan(rows, b.shape[0], b.shape[1], b.dtype)
    return blas_cpu.PackedColumns(b, plan) if plan else b


class RNNLayerFunction(Function):
    """One layer, one direction, all time steps. Inputs ``(x, h0[, c0], w_ih, w_hh[, b_ih,
    b_hh])`` with x (T, N, I), h0 and c0 (N, H), w_ih (G*H, I), w_hh (G*H, H), biases (G*H,);
    outputs ``(y, h_n[, c_n])`` with y (T, N, H). Options: ``mode`` (a key of ``GATES``),
    ``reverse``, ``lengths`` (an int32 array of the device, or None: all steps valid)."""

    save_inputs = True

    def forward(self, x: Any, h0: Any, *rest: Any, mode: str, reverse: bool,
                lengths: Any) -> tuple:
        with self.device:  # every allocation and launch on the tensors' device
            return self._forward(x, h0, *rest, mode=mode, reverse=reverse, lengths=lengths)

    def _forward(self, x: Any, h0: Any, *rest: Any, mode: str, reverse: bool,
                 lengths: Any) -> tuple:
        xp = self.device.xp
        lstm, gru = mode == "lstm", mode == "gru"
        params = rest[1:] if lstm else rest
        w_ih, w_hh = params[0], params[1]
        T, N, _ = x.shape
        H, GH = h0.shape[1], w_hh.shape[0]
        dtype = x.dtype
        self.mode, self.lstm, self.gru = mode, lstm, gru
        self.order = range(T - 1, -1, -1) if reverse else range(T)
        self.cells = self._cells(lengths, N, H, dtype)
        # the whole-layer NumPy LSTM (rnn_cpu.lstm_layer_forward): cpu, no lengths, no float16
        self.fused = lstm and getattr(self.cells, "fused", False)

        # the input projection of every step in one GEMM, with the biases folded in (GRU keeps
        # b_hn apart: the reset gate multiplies W_hn h + b_hn), rounded to dtype once
        gemm = gemm_dtype(xp, dtype)
        if self.fused:
            return self._forward_fused(x, h0, rest[0], w_ih, w_hh, params[2:])
        xg = device_matmul(xp, x.reshape(T * N, x.shape[2]).astype(gemm, copy=False),
                           w_ih.T.astype(gemm, copy=False)).reshape(T, N, GH)
        b_hn = xp.zeros(H, dtype) if gru else None
        if len(params) == 4:
            b_ih, b_hh = params[2], params[3]
            xg += b_ih.astype(gemm, copy=False)
            if gru:
                xg[:, :, :2 * H] += b_hh[:2 * H].astype(gemm, copy=False)
                b_hn = xp.ascontiguousarray(b_hh[2 * H:])
            else:
                xg += b_hh.astype(gemm, copy=False)
        xg = xg.astype(dtype, copy=False)

        # h_prev[t] (and c_prev[t]): the state entering the step at time t; the new state goes
        # straight into the slot of the next step to run, or into h_n after the last one.
        h_prev = xp.empty((T, N, H), dtype)
        h_prev[self.order[0]] = h0
        h_n = xp.empty((N, H), dtype)
        y = xp.empty((T, N, H), dtype)
        hg = xp.empty((N, GH), dtype)
        # C-contiguous: OpenBLAS's sgemm with a transposed B (the view w_hh.T) ran 2x slower
        # for small batches (N=4, H=256: 170 us against 87 us per step, 2-core VM)
        w_hh_t = (blas_cpu.transposed(w_hh, gemm) if xp is np
                  else xp.ascontiguousarray(w_hh.T, dtype=gemm))
        w_hh_t = _packed(xp, w_hh_t, N, dtype)
        gates: Any = xp.empty((T, N, GH), dtype) if mode in ("lstm", "gru") else None
        if lstm:
            c_prev, c_n, tanh_c = (xp.empty((T, N, H), dtype), xp.empty((N, H), dtype),
                                   xp.empty((T, N, H), dtype))
            c_prev[self.order[0]] = rest[0]
        if gru:
            hn = xp.empty((T, N, H), dtype)
        cells = self.cells
        for k, t in enumerate(self.order):
            last = k == T - 1
            h_out = h_n if last else h_prev[self.order[k + 1]]
            _matmul_into(xp, h_prev[t], w_hh_t, hg)
            if lstm:
                c_out = c_n if last else c_prev[self.order[k + 1]]
                cells.lstm_forward(xg[t], hg, h_prev[t], c_prev[t], t, h_out, c_out, y[t],
                                   gates[t], tanh_c[t])
            elif gru:
                cells.gru_forward(xg[t], hg, b_hn, h_prev[t], t, h_out, y[t], gates[t], hn[t])
            else:
                cells.rnn_forward(xg[t], hg, h_prev[t], t, h_out, y[t])
        self.h_prev, self.gates = h_prev, gates
        if lstm:
            self.c_prev, self.tanh_c = c_prev, tanh_c
            return y, h_n, c_n
        if gru:
            self.hn = hn
        else:
            self.y = y
            self.guard_outputs = True  # backward reads y: an in-place change must raise
        return y, h_n

    def _forward_fused(self, x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any,
                       biases: tuple) -> tuple:
        """The LSTM forward through :func:`rnn_cpu.lstm_layer_forward`. The input projection
        (the gates buffer) comes pre-scaled from the GEMM, the gate scale folded into W_ih^T
        and into each bias: the scale is a power of two, so every rounding scales exactly
        and the gates equal the unscaled projection plus b_ih plus b_hh, times the scale,
        bit for bit, one pass over (T, N, 4H) fewer (the per-step cells' order; test_mutants_m
        checks the equality)."""
        T, N, _ = x.shape
        H, GH, dtype = h0.shape[1], w_hh.shape[0], x.dtype
        scale = rnn_cpu.lstm_gate_scale(H, dtype)
        w_ih_t = w_ih.T * scale  # (I, 4H)
        xg = (x.reshape(T * N, x.shape[2]) @ w_ih_t).reshape(T, N, GH)
        for b in biases:  # b_ih, then b_hh
            xg += b * scale
        # W_hh scaled in its own (4H, H) order, one contiguous pass; the layer takes its
        # transpose as a view and copies only where its orientation needs W_hh^T in C order
        # (a transposing copy of a 4096 x 1024 weight cost 30 ms; the flipped small-batch
        # GEMMs read W_hh itself, which before went through two such copies)
        w_hh_t = (w_hh.astype(dtype, copy=False) * scale[:, None]).T
        y, h_prev, c_prev, tanh_c = (np.empty((T, N, H), dtype) for _ in range(4))
        c_n = np.empty((N, H), dtype)
        rnn_cpu.lstm_layer_forward(xg, w_hh_t, h0, c0, self.order, y, h_prev, c_prev, c_n,
                                   tanh_c)
        self.h_prev, self.gates, self.c_prev, self.tanh_c = h_prev, xg, c_prev, tanh_c
        return y, y[self.order[-1]].copy(), c_n

    def _free(self) -> None:
        super()._free()
        self.h_prev = self.gates = self.c_prev = self.tanh_c = self.hn = self.y = None

    def _cells(self, lengths: Any, N: int, H: int, dtype: np.dtype) -> Any:
        impl = RNN_CELL.select(self.device, dtype, self.mode)
        return impl.cells(self.device, dtype, lengths, self.mode == "rnn_relu", N, H,
                          len(self.order))

    def backward(self, gy: Tensor | None, gh_n: Tensor | None,
                 gc_n: Tensor | None = None) -> tuple:
        with self.device:
            return self._backward(gy, gh_n, gc_n)

    def _backward(self, gy: Tensor | None, gh_n: Tensor | None,
                  gc_n: Tensor | None = None) -> tuple:
        if is_grad_enabled():
            raise RuntimeError("RNNLayerFunction: double backward (create_graph=True) through "
                               "a fused recurrent layer is not supported")
        xp = self.device.xp
        saved = self.saved_tensors
        k = 3 if self.lstm else 2  # position of w_ih among the inputs
        x, w_ih, w_hh = saved[0]._data, saved[k]._data, saved[k + 1]._data
        T, N, H = self.h_prev.shape
        GH, dtype = w_hh.shape[0], x.dtype
        gemm = gemm_dtype(xp, dtype)
        w_ih, w_hh = w_ih.astype(gemm, copy=False), w_hh.astype(gemm, copy=False)

        def grad_array(g: Tensor | None, shape: tuple) -> Any:
            return xp.zeros(shape, dtype) if g is None else xp.ascontiguousarray(g._data, dtype)

        gy_a = grad_array(gy, (T, N, H))
        dh = grad_array(gh_n, (N, H)).copy()
        dc = grad_array(gc_n, (N, H)).copy() if self.lstm else None
        dxg = xp.empty((T, N, GH), dtype)
        dhg = xp.empty((T, N, GH), dtype) if self.gru else dxg  # RNN, LSTM: the same values
        dh_direct, dh_next = xp.empty((N, H), dtype), xp.empty((N, H), dtype)
        w_hh_step = w_hh if self.fused else _packed(xp, w_hh, N, dtype)
        dc_next = xp.empty((N, H), dtype) if self.lstm else None
        cells = self.cells
        if self.fused:
            assert dc is not None
            rnn_cpu.lstm_layer_backward(gy_a, dh, dc, self.gates, self.c_prev, self.tanh_c,
                                        w_hh, self.order, dxg)
        for t in () if self.fused else reversed(self.order):
            if self.lstm:
                cells.lstm_backward(gy_a[t], dh, dc, self.gates[t], self.c_prev[t],
                                    self.tanh_c[t], t, dxg[t], dh_direct, dc_next)
                dc, dc_next = dc_next, dc
            elif self.gru:
                cells.gru_backward(gy_a[t], dh, self.gates[t], self.hn[t], self.h_prev[t], t,
                                   dxg[t], dhg[t], dh_direct)
            else:
                cells.rnn_backward(gy_a[t], dh, self.y[t], t, dxg[t], dh_direct)
            _matmul_into(xp, dhg[t], w_hh_step, dh_next, dh_direct.astype(gemm, copy=False))
            dh, dh_next = dh_next, dh

        # weight gradients over all steps: one GEMM each
        need = self.needs_input_grad
        dxg2 = dxg.reshape(T * N, GH).astype(gemm, copy=False)
        dhg2 = dxg2 if dhg is dxg else dhg.reshape(T * N, GH).astype(gemm, copy=False)
        grads: list[Any] = [None] * len(need)
        if need[0]:
            grads[0] = device_matmul(xp, dxg2, w_ih).reshape(x.shape)
        grads[1] = dh
        if self.lstm:
            grads[2] = dc
        if need[k]:
            grads[k] = device_matmul(xp, dxg2.T,
                                     x.reshape(T * N, x.shape[2]).astype(gemm, copy=False))
        if need[k + 1]:
            grads[k + 1] = device_matmul(xp, dhg2.T,
                                         self.h_prev.reshape(T * N, H).astype(gemm, copy=False))
        if len(need) > k + 2:
            grads[k + 2] = dxg2.sum(0)
            # RNN, LSTM: both biases meet the same pre-activation gradient
            grads[k + 3] = grads[k + 2].copy() if dhg2 is dxg2 else dhg2.sum(0)
        return tuple(None if g is None or not n else
                     Tensor._make(g.astype(dtype, copy=False), self.device)
                     for g, n in zip(grads, need))


def _check_bfloat16_device(input: Tensor, mode: str) -> None:
    """bfloat16 layers run on cpu and emu. NOTE: on cuda a bfloat16 array is uint16 words and
    CuPy has no bfloat16 GEMM, so the layer's input and recurrent projections have no path
    there yet (the cell kernels themselves take __nv_bfloat16)."""
    if input.dtype == bfloat16 and input.device.is_cuda:
        raise TypeError(f"{mode}: dtype bfloat16 is not supported on device {input.device} "
                        "(CuPy has no bfloat16 GEMM); use float16 or float32 there")


@low_precision
def rnn_layer(input: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, mode: str,
              reverse: bool = False, lengths: Any = None) -> tuple[Tensor, ...]:
    """Run one recurrent layer in one direction over a (T, N, I) sequence.

    ``mode`` is ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` (needs ``c0``) or ``"gru"``; weights
    in PyTorch's layout. ``lengths`` (N ints, each in 1..T) marks padded steps. Returns
    ``(y, h_n)``, or ``(y, h_n, c_n)`` for LSTM. Inputs are assumed valid (``dlcore.nn``'s
    layers check them).

    >>> x, h0 = dlcore.ones(5, 2, 3), dlcore.zeros(2, 4)
    >>> y, h_n = rnn_layer(x, h0, None, dlcore.ones(12, 3), dlcore.ones(12, 4), None, None, "gru")
    >>> tuple(y.shape), tuple(h_n.shape)
    ((5, 2, 4), (2, 4))
    """
    _check_bfloat16_device(input, mode)
    tensors: list[Any] = [input, h0] + ([c0] if mode == "lstm" else []) + [w_ih, w_hh]
    if b_ih is not None:
        tensors += [b_ih, b_hh]
    if lengths is not None:
        lengths = input.device.xp.asarray(
            lengths.numpy() if isinstance(lengths, Tensor) else lengths, dtype=np.int32)
    return RNNLayerFunction.apply(*tensors, mode=mode, reverse=reverse, lengths=lengths)


# ---- dlcore check cases: the kernels against the cpu path ---------------------------------

def _check_rnn(device: Any, mode: str, reverse: bool = False,
               lengths: list[int] | None = None, dtype: Any = None) -> dict:
    T, N, I, H = 6, 3, 4, 5
    g = GATES[mode] * H
    shapes = [(T, N, I), (N, H), (g, I), (g, H), (g,), (g,)]
    names = ["input", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]
    if mode == "lstm":
        shapes.insert(2, (N, H))
        names.insert(2, "c0")

    def op(x: Tensor, h0: Tensor, *rest: Tensor) -> Tensor:
        c0, weights = (rest[0], rest[1:]) if mode == "lstm" else (None, rest)
        w_ih, w_hh, b_ih, b_hh = weights
        if dtype is not None:
            x, h0, w_ih, w_hh, b_ih, b_hh = (t.to(dtype) for t in (x, h0, w_ih, w_hh, b_ih,
                                                                     b_hh))
            c0 = None if c0 is None else c0.to(dtype)
        outs = rnn_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, mode=mode, reverse=reverse,
                         lengths=lengths)
        if dtype is not None:
            outs = tuple(o.float() for o in outs)
        return outs[0] * 1.0 + outs[1].sum() + (outs[2].sum() if mode == "lstm" else 0.0)

    return forward_backward(device, 3, shapes, op, names)


_RNN_CHECKS: dict[str, dict[str, Any]] = {
        "rnn tanh cell": dict(mode="rnn_tanh"),
        "rnn relu cell, reverse": dict(mode="rnn_relu", reverse=True),
        "lstm cell": dict(mode="lstm"),
        "lstm cell, lengths": dict(mode="lstm", lengths=[6, 3, 1]),
        "gru cell": dict(mode="gru"),
        "gru cell, reverse, lengths": dict(mode="gru", reverse=True, lengths=[2, 6, 4])}
# "rnn tanh cell": its gradients reach 45 (the checked loss sums every output through six
# tanh steps) with entries near 0.06 beside them, and on cuda the per-step GEMMs are cuBLAS's,
# summing in another order than NumPy's BLAS (the emulator's GEMMs are NumPy's, so emu agrees
# with cpu to 3e-5): an H200 gave 9e-5 on a 0.06 entry of grad w_hh, 2e-6 of the largest. The
# bound: 1e-5 of the largest gradient (about 120 float32 ulps of 45, for 18 products summed per
# step over six steps), 4.5e-4 absolute, beside the float32 rtol.
_RNN_ATOL = {"rnn tanh cell": 4.5e-4}
# Against the emulator (--reference emu) the cell kernels are the same but the GEMMs are not
# (cuBLAS against NumPy's BLAS): the same 1e-5 of each output's largest magnitude (the H200
# gave 2.2e-6 at most, on the tanh cell's grad h0).
RNN_EMU_RTOL = 1e-5
for _name, _options in _RNN_CHECKS.items():
    RNN_CELL.check(_name, atol=_RNN_ATOL.get(_name), emu_rtol=RNN_EMU_RTOL)(
        kwargs_case(_check_rnn, **_options))
del _name, _options
# float16: both paths keep half storage and compute each step's gates in float32, rounding
# every stored value once, but the projections are GEMMs in another order (cuBLAS or the
# emulated path against NumPy's float32 BLAS), so a rounding may move by an ulp per step and
# six steps carry it forward through h and c: the layer tests' bound of 12 float16 ulps
# (12 x 2^-10 relative, about 1.2%) for outputs and gradients; 2^-8 absolute near zero.
# Against the emulator: float16 storage rounds each step's values once from float32 results
# that differ in their last bits (the GEMM orders), so a stored value may move by one float16
# ulp per step: 4 ulps of each output's largest magnitude (2^-8; the H200 gave 9e-4, one ulp).
RNN_CELL.check("lstm cell float16", rtol=12 * 2.0 ** -10, atol=2.0 ** -8,
               emu_rtol=2.0 ** -8)(
    kwargs_case(_check_rnn, mode="lstm", dtype=np.float16))
