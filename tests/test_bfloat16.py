"""bfloat16: ml_dtypes' NumPy dtype on cpu and emu, uint16 words on cuda.

The reference for every value is ml_dtypes' own conversion: an elementwise op is its float32
result rounded to bfloat16 once (bit for bit), a reduction, matmul or convolution accumulates
in float32 and rounds once, so it is within one bfloat16 rounding -- U = 2^-8 of the result
(8 significand bits) -- of the float64 value of the same bfloat16 inputs, plus the float32
accumulation error (a few 2^-24 of the sum of the terms' magnitudes).
"""

from __future__ import annotations

import contextlib
import warnings

import ml_dtypes
import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.dtypes import BF16_WORDS, bfloat16_bits, bfloat16_value, promote
from dlcore.tensor import Tensor

BF16 = np.dtype(ml_dtypes.bfloat16)
U = 2.0**-8  # bfloat16's unit roundoff, relative


@pytest.fixture(params=["cpu", "emu"])
def dev(request: pytest.FixtureRequest) -> str:
    """bfloat16 holds ml_dtypes arrays on these; cuda (words) is tested by its guards below."""
    return request.param


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def sample(*shape: int, seed: int = 0) -> np.ndarray:
    """bfloat16 values (normal draws, exactly representable), as float32."""
    return np.random.default_rng(seed).standard_normal(shape).astype(BF16).astype(np.float32)


def within_one_rounding(got: dlcore.Tensor, exact: np.ndarray, terms: np.ndarray) -> None:
    """``got`` is bfloat16 and within U of ``exact`` plus 2^-20 of ``terms`` (the sum of
    magnitudes each value accumulates: float32's share), but not exact everywhere."""
    assert got.dtype == dlcore.bfloat16
    err = np.abs(got.float().numpy().astype(np.float64) - exact)
    bound = U * np.abs(exact) + 2.0**-20 * terms
    assert np.all(err <= bound), f"worst excess {np.max(err - bound)}"


# ---- the dtype --------------------------------------------------------------------------
def test_bfloat16_is_the_ml_dtypes_dtype() -> None:
    assert dlcore.bfloat16 == BF16 and dlcore.dtypes.to_dtype("bfloat16") == BF16
    assert dlcore.dtypes.to_dtype(ml_dtypes.bfloat16) == BF16
    assert dlcore.dtypes.is_floating(BF16) and not dlcore.dtypes.is_floating(dlcore.int64)
    assert BF16_WORDS not in dlcore.dtypes.SUPPORTED  # so cuda's words always mean bfloat16


def test_promotion_is_pytorchs() -> None:
    f16, f32, f64 = dlcore.float16, dlcore.float32, dlcore.float64
    assert promote(BF16, f16) == promote(f16, BF16) == f32
    assert promote(BF16, f32) == f32 and promote(BF16, f64) == f64
    for i in (dlcore.int8, dlcore.uint8, dlcore.int32, dlcore.int64, dlcore.bool):
        assert promote(BF16, i) == promote(i, BF16) == BF16
    assert dlcore.dtypes.scalar_result(BF16, 2.5) == BF16


def test_creation_and_casts_round_as_ml_dtypes(dev: str) -> None:
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -3.3, 1e-40, 3.4e38, np.inf, 0.1],
                      np.float32)  # two ties to even, a subnormal, an overflow to inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = values.astype(BF16)
    for t in (dlcore.tensor(values, dtype=dlcore.bfloat16, device=dev),
              dlcore.tensor(values, device=dev).bfloat16(),
              dlcore.tensor(values, device=dev).to("bfloat16")):
        assert t.dtype == dlcore.bfloat16 and t.is_floating_point()
        assert t.numpy().dtype == BF16
        np.testing.assert_array_equal(bits(t.numpy()), bits(want))
    t = dlcore.tensor(values, dtype=dlcore.bfloat16, device=dev)
    np.testing.assert_array_equal(t.float().numpy(), want.astype(np.float32))  # exact
    np.testing.assert_array_equal(bits(t.half().numpy()), bits(want.astype(np.float16)))
    assert t[:4].long().tolist() == [1, 1, 1, -3]
    assert dlcore.zeros(2, dtype=dlcore.bfloat16, device=dev).dtype == dlcore.bfloat16
    assert "dtype=dlcore.bfloat16" in repr(t) and "1.0156" in repr(t)


def test_requires_grad_and_backward_stay_bfloat16(dev: str) -> None:
    x = dlcore.tensor(sample(3, 4), dtype=dlcore.bfloat16, device=dev, requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.dtype == dlcore.bfloat16
    np.testing.assert_array_equal(bits(x.grad.numpy()), bits((2 * sample(3, 4)).astype(BF16)))


# ---- ops ----------------------------------------------------------------------------------
def test_elementwise_ops_round_the_float32_result_once(dev: str) -> None:
    a, b = sample(4, 5, seed=1), sample(4, 5, seed=2)
    ta, tb = (dlcore.tensor(v, dtype=dlcore.bfloat16, device=dev) for v in (a, b))
    den = (abs(b) + 1).astype(BF16).astype(np.float32)  # what tb.abs() + 1 holds
    for got, want in ((ta + tb, a + b), (ta * tb, a * b), (ta / (tb.abs() + 1), a / den),
                      (ta.exp(), np.exp(a)), (ta.tanh(), np.tanh(a)), (ta * 2.5, a * 2.5),
                      (ta.clamp(-0.5, 0.5), np.clip(a, -0.5, 0.5)),
                      (dlcore.maximum(ta, tb), np.maximum(a, b))):
        assert got.dtype == dlcore.bfloat16
        np.testing.assert_array_equal(bits(got.numpy()), bits(want.astype(BF16)))
    assert (ta + tb.float()).dtype == dlcore.float32 and (ta + tb.half()).dtype == dlcore.float32
    assert (ta * dlcore.tensor(3, device=dev)).dtype == dlcore.bfloat16


def test_reductions_accumulate_in_float32(dev: str) -> None:
    ones = dlcore.ones(1000, dtype=dlcore.bfloat16, device=dev)
    assert ones.sum().item() == 1000.0  # bfloat16 partial sums would stop at 256
    assert ones.mean().item() == 1.0
    x = sample(8, 300, seed=3)
    t = dlcore.tensor(x, dtype=dlcore.bfloat16, device=dev)
    x64 = x.astype(np.float64)
    within_one_rounding(t.sum(1), x64.sum(1), np.abs(x64).sum(1))
    within_one_rounding(t.mean(0), x64.mean(0), np.abs(x64).mean(0))
    within_one_rounding(t.var(1), x64.var(1, ddof=1), 4 * (x64**2).sum(1) / 299)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    within_one_rounding(F.softmax(t, 1), p, p)
    within_one_rounding(F.log_softmax(t, 1), np.log(p), 8 * np.abs(np.log(p)))
    within_one_rounding(t.logsumexp(1), np.log(np.exp(x64).sum(1)), 8 * np.abs(x64).max(1))


def test_matmul_and_linear_are_float32_gemms_rounded_once(dev: str) -> None:
    a, w, b = sample(6, 40, seed=4), sample(7, 40, seed=5), sample(7, seed=6)
    ta, tw, tb = (dlcore.tensor(v, dtype=dlcore.bfloat16, device=dev) for v in (a, w, b))
    got = ta @ tw.T
    np.testing.assert_array_equal(bits(got.numpy()), bits((a @ w.T).astype(BF16)))
    exact = a.astype(np.float64) @ w.T.astype(np.float64) + b
    # the GEMM rounded once, then the bias added in bfloat16: two roundings
    y = F.linear(ta, tw, tb)
    assert y.dtype == dlcore.bfloat16
    err = np.abs(y.float().numpy() - exact)
    assert np.all(err <= 2 * U * (np.abs(exact) + np.abs(b)) + 2.0**-20 * np.abs(a) @ np.abs(w.T))


def test_shape_ops_are_exact(dev: str) -> None:
    a, b = sample(3, 4, seed=7), sample(3, 4, seed=8)
    ta, tb = (dlcore.tensor(v, dtype=dlcore.bfloat16, device=dev) for v in (a, b))
    for got, want in ((dlcore.cat([ta, tb], 1), np.concatenate([a, b], 1)),
                      (dlcore.stack([ta, tb]), np.stack([a, b])), (ta[1:, ::2], a[1:, ::2]),
                      (ta.T.contiguous(), a.T), (ta.reshape(-1), a.reshape(-1)),
                      (dlcore.where(ta > 0, ta, tb), np.where(a > 0, a, b)),
                      (ta.sort(1, descending=True)[0], -np.sort(-a, 1))):
        assert got.dtype == dlcore.bfloat16
        np.testing.assert_array_equal(got.float().numpy(), want)
    assert ta.argmax(1).tolist() == a.argmax(1).tolist()


def test_pooling_on_cpu_and_the_emu_kernels(dev: str) -> None:
    x = sample(2, 3, 7, 6, seed=9)
    t = dlcore.tensor(x, dtype=dlcore.bfloat16, device=dev, requires_grad=True)
    y = F.max_pool2d(t, 3, 2, 1)
    np.testing.assert_array_equal(y.float().numpy(),
                                  F.max_pool2d(dlcore.tensor(x), 3, 2, 1).numpy())  # exact
    avg = F.avg_pool2d(t, 2)
    x64 = x.astype(np.float64)
    want = x64[:, :, :6].reshape(2, 3, 3, 2, 3, 2).mean((3, 5))
    within_one_rounding(avg, want, np.abs(want))
    (y.float().sum() + avg.float().sum()).backward()
    assert t.grad.dtype == dlcore.bfloat16


def test_conv2d_in_float32_on_cpu_and_a_clear_error_on_emu(dev: str) -> None:
    x, w = sample(2, 3, 6, 6, seed=10), sample(4, 3, 3, 3, seed=11)
    tx, tw = (dlcore.tensor(v, dtype=dlcore.bfloat16, device=dev) for v in (x, w))
    if dev == "emu":  # the conv2d kernels take float16, float32, float64
        with pytest.raises(TypeError, match="conv2d: dtype bfloat16 is not supported on device"):
            F.conv2d(tx, tw, padding=1)
        return
    y = F.conv2d(tx, tw, padding=1)
    ref = F.conv2d(dlcore.tensor(x, dtype=dlcore.float64), dlcore.tensor(w, dtype=dlcore.float64),
                   padding=1).numpy()
    terms = F.conv2d(dlcore.tensor(np.abs(x), dtype=dlcore.float64),
                     dlcore.tensor(np.abs(w), dtype=dlcore.float64), padding=1).numpy()
    within_one_rounding(y, ref, terms)


def test_losses_and_norms(dev: str) -> None:
    x = sample(6, 5, seed=12)
    t = dlcore.tensor(x, dtype=dlcore.bfloat16, device=dev, requires_grad=True)
    target = dlcore.tensor([0, 1, 2, 3, 4, 0], device=dev)
    loss = F.cross_entropy(t, target)
    ref = F.cross_entropy(dlcore.tensor(x, dtype=dlcore.float64, device=dev), target).item()
    assert loss.dtype == dlcore.bfloat16 and abs(loss.item() - ref) <= 4 * U * abs(ref)
    loss.backward()
    assert t.grad.dtype == dlcore.bfloat16
    ln = F.layer_norm(t, (5,))
    ref_ln = F.layer_norm(dlcore.tensor(x, dtype=dlcore.float64), (5,)).numpy()
    assert ln.dtype == dlcore.bfloat16
    assert np.abs(ln.float().numpy() - ref_ln).max() <= 8 * U * np.abs(ref_ln).max()


# ---- modules, autocast, checkpoints, --amp --------------------------------------------
def test_module_bfloat16_and_autocast(dev: str) -> None:
    m = dlcore.nn.Linear(4, 3).to(dev).bfloat16()
    assert m.weight.dtype == dlcore.bfloat16 and m.weight.requires_grad
    x = dlcore.ones(2, 4, device=dev)
    assert m(x.bfloat16()).dtype == dlcore.bfloat16
    f32 = dlcore.nn.Linear(4, 3).to(dev)
    with dlcore.autocast(Device(dev).type, dtype=dlcore.bfloat16):
        y = f32(x)
        s = y.sum()
    assert y.dtype == dlcore.bfloat16 and s.dtype == dlcore.float32
    s.backward()
    assert f32.weight.grad.dtype == dlcore.float32


def test_cpu_autocast_defaults_to_bfloat16() -> None:
    assert dlcore.autocast("cpu").dtype == dlcore.bfloat16  # PyTorch's
    assert dlcore.autocast("emu").dtype == dlcore.float16
    with dlcore.autocast("cpu"):
        y = F.linear(dlcore.ones(2, 3), dlcore.ones(4, 3))
    assert y.dtype == dlcore.bfloat16


def test_amp_training_picks_bfloat16_on_the_cpu_without_loss_scaling() -> None:
    from dlcore.train.common import MixedPrecision
    cpu, emu = MixedPrecision(Device("cpu"), True), MixedPrecision(Device("emu"), True)
    assert cpu.dtype == dlcore.bfloat16 and not cpu.scaler.is_enabled()
    assert emu.dtype == dlcore.float16 and emu.scaler.is_enabled()
    with cpu.autocast():
        assert F.linear(dlcore.ones(1, 2), dlcore.ones(2, 2)).dtype == dlcore.bfloat16


def test_checkpoint_round_trip_keeps_bfloat16_bits(tmp_path) -> None:
    x = dlcore.tensor(sample(3, 5, seed=13), dtype=dlcore.bfloat16)
    m = dlcore.nn.Linear(3, 2).bfloat16()
    path = tmp_path / "c.safetensors"
    dlcore.save({"x": x, "model": m.state_dict(), "array": x.numpy()}, path)
    back = dlcore.load(path)
    assert back["x"].dtype == dlcore.bfloat16 and back["array"].dtype == BF16
    np.testing.assert_array_equal(bits(back["x"].numpy()), bits(x.numpy()))
    np.testing.assert_array_equal(bits(back["model"]["weight"].numpy()),
                                  bits(m.weight.detach().numpy()))
    with open(path, "rb") as f:  # safetensors' own dtype name, readable by other frameworks
        header = f.read(int.from_bytes(f.read(8), "little"))
    assert b'"BF16"' in header


# ---- cuda: the words and their conversions, tested with NumPy as the array module ----------
def test_words_to_float32_is_exact_for_every_pattern() -> None:
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = bfloat16_value(np, words)
    want = words.view(BF16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN bits too


def test_float32_to_words_rounds_as_ml_dtypes() -> None:
    """Round to nearest even on the bit pattern, for random patterns and every bfloat16
    value's exact ties, its neighbours and the values themselves (NaN, inf, subnormals)."""
    rng = np.random.default_rng(0)
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    patterns = np.concatenate([rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
                               .astype(np.uint32), high, high | 0x8000, high | 0x7FFF,
                               high | 0x8001, high | 1])
    x = patterns.view(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = x.astype(BF16).view(np.uint16)
    got = bfloat16_bits(np, x)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    assert set(got[np.isnan(x)].tolist()) == {0x7FC0, 0xFFC0}  # quiet, sign kept


def _cuda_words(values: np.ndarray) -> dlcore.Tensor:
    """A tensor as cuda holds bfloat16 (uint16 words; NumPy stands in for CuPy's arrays)."""
    return Tensor._make(values.astype(BF16).view(np.uint16), Device("cuda"))


def test_cuda_words_report_bfloat16_and_ops_without_a_path_raise() -> None:
    t = _cuda_words(np.ones((2, 2), np.float32))
    assert t.dtype == dlcore.bfloat16 and t.is_floating_point()
    for op, run in (("add", lambda: t + t), ("mul", lambda: t * 2.0), ("exp", lambda: t.exp()),
                    ("sum", lambda: t.sum()), ("softmax", lambda: F.softmax(t, 1)),
                    ("matmul", lambda: t @ t), ("linear", lambda: F.linear(t, t)),
                    ("greater", lambda: t > 0), ("clamp", lambda: t.clamp(0, 1))):
        with pytest.raises(TypeError, match=f"^{op}: dtype bfloat16 is not supported on cuda"):
            run()


def test_bfloat16_layer_raises_on_cuda() -> None:
    t = _cuda_words(np.ones((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="lstm: dtype bfloat16 is not supported on device cuda"):
        dlcore.ops.rnn.rnn_layer(t, t[0], t[0], t, t, None, None, "lstm")


@pytest.fixture
def numpy_as_cuda(monkeypatch: pytest.MonkeyPatch) -> Device:
    """The cuda device with NumPy standing in for CuPy (no GPU needed): its conversions run
    the code cuda runs, on host arrays."""
    dev = Device("cuda")
    monkeypatch.setattr(dev, "_xp", np)
    monkeypatch.setattr(Device, "use", lambda self: contextlib.nullcontext())
    return dev


def test_cuda_conversions_keep_words_and_round_as_ml_dtypes(numpy_as_cuda: Device) -> None:
    dev = numpy_as_cuda
    x = sample(5, 7, seed=14) * np.float32(1 + 2**-10)  # not bfloat16 values: rounding needed
    want = x.astype(BF16)
    for words in (dev.asarray(want), dev.asarray(x, dtype=BF16), dev.astype(x, BF16)):
        assert words.dtype == BF16_WORDS
        np.testing.assert_array_equal(words, bits(want))
    words = dev.asarray(want)
    np.testing.assert_array_equal(dev.astype(words, np.dtype(np.float32)), want.astype(np.float32))
    np.testing.assert_array_equal(bits(dev.astype(words, np.dtype(np.float16))),
                                  bits(want.astype(np.float16)))
    t = Tensor._make(words, dev)
    assert t.dtype == dlcore.bfloat16
    f = t.float()
    assert f.dtype == dlcore.float32 and f.array.dtype == np.float32
    np.testing.assert_array_equal(f.array, want.astype(np.float32))
    back = Tensor._make(x, dev).bfloat16()
    assert back.dtype == dlcore.bfloat16 and back.array.dtype == BF16_WORDS
    np.testing.assert_array_equal(back.array, bits(want))
    assert back.to(dlcore.bfloat16) is back  # already bfloat16: nothing to do
    x_t = Tensor._make(x, dev).requires_grad_()
    x_t.bfloat16().float().sum().backward()  # the casts' backward: float32 -> words -> float32
    assert x_t.grad.dtype == dlcore.float32 and np.all(x_t.grad.array == 1)
