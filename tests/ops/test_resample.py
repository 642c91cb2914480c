"""interpolate (nearest, bilinear with both align_corners), pixel_shuffle/pixel_unshuffle
and the Upsample/PixelShuffle/PixelUnshuffle modules: against PyTorch where importable,
float64 gradchecks, and the errors at the public boundary."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F

SHAPES = [(2, 3, 5, 7), (1, 2, 4, 4), (1, 1, 1, 3), (2, 1, 6, 3)]
# integer and non-integer scales, up and down, per-axis pairs and explicit sizes
RESIZES = [
    {"scale_factor": 2}, {"scale_factor": 3}, {"scale_factor": 0.5}, {"scale_factor": 1.7},
    {"scale_factor": (0.6, 2.5)}, {"scale_factor": 1}, {"scale_factor": 1.01},
    {"size": (9, 4)}, {"size": 3}, {"size": (1, 1)}, {"size": (2, 13)},
]
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]
MODE_IDS = ["nearest", "bilinear", "bilinear_ac"]


def _torch():
    return pytest.importorskip("torch")


def _torch_interpolate(x: np.ndarray, mode: str, align_corners: bool | None,
                       **resize: object) -> np.ndarray | None:
    torch = _torch()
    try:
        out = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode,
                                              align_corners=align_corners, **resize)
    except RuntimeError:  # an output side of 0: checked in the error tests
        return None
    return out.numpy()


@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("resize", RESIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_interpolate_matches_torch(device, shape, resize, mode, align_corners):
    x = rand(*shape, seed=1, dtype=np.float32)
    expected = _torch_interpolate(x, mode, align_corners, **resize)
    if expected is None:  # PyTorch rejects this output size (a side of 0): so must dlcore
        with pytest.raises((RuntimeError, ValueError), match="interpolate"):
            F.interpolate(on(device, x), mode=mode, align_corners=align_corners, **resize)
        return
    out = F.interpolate(on(device, x), mode=mode, align_corners=align_corners, **resize)
    if mode == "nearest":  # a pure gather: the same elements exactly
        np.testing.assert_array_equal(out.numpy(), expected)
    else:
        check(out, expected, rtol=1e-5, atol=1e-6)


def _ref_axis(n_in: int, n_out: int, scale: float | None, mode: str,
              align_corners: bool | None) -> list[tuple[int, int, float]]:
    """(i0, i1, weight of i1) per output index along one axis, by PyTorch's documented
    coordinate rules written out directly: ``scale`` is 1/scale_factor when one was given,
    else in/out; an axis whose size does not change is copied."""
    if n_in == n_out:
        return [(i, i, 0.0) for i in range(n_out)]
    ratio = scale if scale is not None else n_in / n_out  # float64: the inputs here are
    taps = []
    for d in range(n_out):
        if mode == "nearest":
            # nearest's index is float32 arithmetic whatever the input dtype, as PyTorch's
            i = min(int(np.floor(np.float32(d) * np.float32(ratio))), n_in - 1)
            taps.append((i, i, 0.0))
            continue
        if align_corners:
            src = d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((d + 0.5) * ratio - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        taps.append((i0, min(i0 + 1, n_in - 1), src - i0))
    return taps


def _ref_interpolate(x: np.ndarray, mode: str, align_corners: bool | None,
                     size: object = None, scale_factor: object = None) -> np.ndarray:
    """A slow reference, independent of torch: one loop over output pixels."""
    n, c, h, w = x.shape
    if size is not None:
        oh, ow = (size, size) if isinstance(size, int) else size
        scales: tuple[float | None, float | None] = (None, None)
    else:
        sh, sw = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * 2
        oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
        scales = (1 / sh, 1 / sw)
    rows = _ref_axis(h, oh, scales[0], mode, align_corners)
    cols = _ref_axis(w, ow, scales[1], mode, align_corners)
    y = np.zeros((n, c, oh, ow))
    for i, (r0, r1, a) in enumerate(rows):
        for j, (c0, c1, b) in enumerate(cols):
            y[:, :, i, j] = ((1 - a) * (1 - b) * x[:, :, r0, c0] + (1 - a) * b * x[:, :, r0, c1]
                             + a * (1 - b) * x[:, :, r1, c0] + a * b * x[:, :, r1, c1])
    return y


@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("resize", [r for r in RESIZES if r != {"size": (2, 13)}], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_interpolate_matches_a_direct_loop(device, shape, resize, mode, align_corners):
    """Against the loop above (runs where torch is absent, as in CI)."""
    x = rand(*shape, seed=1)
    expected = _ref_interpolate(x, mode, align_corners, **resize)
    if expected.size == 0:
        return  # an output side of 0: the error tests cover it
    out = F.interpolate(on(device, x), mode=mode, align_corners=align_corners, **resize)
    check(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("resize", [{"scale_factor": 2}, {"scale_factor": 0.6},
                                    {"size": (5, 2)}], ids=str)
def test_interpolate_gradient_matches_torch(device, resize, mode, align_corners):
    torch = _torch()
    x = rand(2, 2, 4, 5, seed=2)
    g = rand(*_torch_interpolate(x, mode, align_corners, **resize).shape, seed=3)
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.interpolate(xt, mode=mode, align_corners=align_corners,
                                    **resize).backward(torch.from_numpy(g))
    xd = on(device, x, requires_grad=True)
    F.interpolate(xd, mode=mode, align_corners=align_corners, **resize).backward(on(device, g))
    check(xd.grad, xt.grad.numpy())


@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("resize", [{"scale_factor": 2}, {"scale_factor": 0.7},
                                    {"size": (4, 2)}], ids=str)
def test_interpolate_gradcheck(device, resize, mode, align_corners):
    def fn(t):
        return F.interpolate(t, mode=mode, align_corners=align_corners, **resize)
    assert grad_ok(fn, [rand(1, 2, 3, 4, seed=4)], device)


def test_interpolate_double_backward(device):
    def fn(t):
        return F.interpolate(t, scale_factor=1.5, mode="bilinear") ** 2
    assert gradgrad_ok(fn, [rand(1, 1, 3, 3, seed=5)], device)


def test_interpolate_known_values():
    x = on("cpu", np.arange(4.0).reshape(1, 1, 2, 2))
    check(F.interpolate(x, scale_factor=2),
          np.repeat(np.repeat(x.numpy(), 2, axis=2), 2, axis=3))
    ac = F.interpolate(x, size=3, mode="bilinear", align_corners=True).numpy()[0, 0]
    np.testing.assert_allclose(ac, [[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])


def test_interpolate_returns_a_new_tensor_and_keeps_dtype():
    x = on("cpu", rand(1, 1, 3, 3, dtype=np.float32))
    out = F.interpolate(x, scale_factor=1)
    assert out is not x and out.dtype == x.dtype
    ints = on("cpu", np.arange(4).reshape(1, 1, 2, 2))
    check(F.interpolate(ints, size=(2, 4)), np.repeat(ints.numpy(), 2, axis=3))


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"size": 2, "scale_factor": 2}, ValueError, "interpolate: only one of size or scale"),
    ({}, ValueError, "interpolate: either size or scale_factor"),
    ({"size": 2, "mode": "bicubic"}, NotImplementedError, "interpolate: mode 'bicubic'"),
    ({"size": 2, "align_corners": True}, ValueError, "interpolate: align_corners option"),
    ({"size": (2, 2, 2)}, ValueError, "interpolate: input and size must have the same"),
    ({"scale_factor": (2,)}, ValueError, "interpolate: input and scale_factor must"),
    ({"size": 2.5}, TypeError, "interpolate: expected size"),
    ({"scale_factor": 0.1}, RuntimeError, r"interpolate: .* output \(H: 0, W: 0\)"),
    ({"size": 0}, RuntimeError, "interpolate: input and output sizes should be greater"),
])
def test_interpolate_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        F.interpolate(on("cpu", rand(1, 2, 3, 3)), **kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 4, 4), (4,)])
def test_interpolate_rejects_non_4d(shape):
    with pytest.raises(NotImplementedError, match=r"interpolate: got \d+D input"):
        F.interpolate(on("cpu", rand(*shape)), scale_factor=2, mode="bilinear")


def test_interpolate_bilinear_rejects_integers():
    with pytest.raises(RuntimeError, match="interpolate: bilinear mode needs a floating"):
        F.interpolate(on("cpu", np.ones((1, 1, 2, 2), np.int64)), size=3, mode="bilinear")


@pytest.mark.parametrize("shape,r", [((1, 4, 2, 3), 2), ((2, 18, 2, 2), 3),
                                     ((5, 1, 8, 3, 3), 2), ((8, 1, 1), 2)], ids=str)
def test_pixel_shuffle_matches_torch_and_inverts(device, shape, r):
    torch = _torch()
    x = rand(*shape, seed=6)
    out = F.pixel_shuffle(on(device, x), r)
    np.testing.assert_array_equal(out.numpy(),
                                  torch.nn.functional.pixel_shuffle(torch.from_numpy(x), r))
    back = F.pixel_unshuffle(out, r)
    np.testing.assert_array_equal(back.numpy(), x)
    np.testing.assert_array_equal(
        back.numpy(), torch.nn.functional.pixel_unshuffle(torch.from_numpy(out.numpy()), r))


def test_pixel_shuffle_gradcheck(device):
    assert grad_ok(lambda t: F.pixel_shuffle(t, 2), [rand(2, 4, 2, 3, seed=7)], device)
    assert grad_ok(lambda t: F.pixel_unshuffle(t, 2), [rand(1, 2, 4, 2, seed=8)], device)


@pytest.mark.parametrize("fn,arg,shape,exc,match", [
    (F.pixel_shuffle, 2, (1, 2, 3, 4), RuntimeError, "input.size\\(-3\\)=2 is not divisible"),
    (F.pixel_shuffle, 2, (3, 4), RuntimeError, "at least 3 dimensions"),
    (F.pixel_shuffle, 0, (1, 4, 3, 4), RuntimeError, "positive upscale_factor, but got 0"),
    (F.pixel_shuffle, 2.0, (1, 4, 3, 4), TypeError, "upscale_factor must be an int"),
    (F.pixel_unshuffle, 2, (1, 2, 3, 4), RuntimeError, "height to be divisible"),
    (F.pixel_unshuffle, 2, (1, 2, 4, 3), RuntimeError, "width to be divisible"),
    (F.pixel_unshuffle, -1, (1, 2, 4, 4), RuntimeError, "positive downscale_factor"),
])
def test_pixel_shuffle_errors(fn, arg, shape, exc, match):
    with pytest.raises(exc, match=f"{fn.__name__}.*{match}"):
        fn(on("cpu", rand(*shape)), arg)


def test_modules_forward_and_repr(device):
    x = on(device, rand(1, 4, 2, 3, seed=9))
    check(nn.Upsample(scale_factor=2)(x), F.interpolate(x, scale_factor=2).numpy())
    up = nn.Upsample(size=(3, 5), mode="bilinear", align_corners=True)
    check(up(x), F.interpolate(x, size=(3, 5), mode="bilinear", align_corners=True).numpy())
    assert repr(nn.Upsample(scale_factor=2)) == "Upsample(scale_factor=2.0, mode='nearest')"
    assert repr(up) == "Upsample(size=(3, 5), mode='bilinear')"
    assert nn.PixelShuffle(2)(x).shape == (1, 1, 4, 6)
    assert nn.PixelUnshuffle(2)(nn.PixelShuffle(2)(x)).shape == (1, 4, 2, 3)
    assert repr(nn.PixelShuffle(2)) == "PixelShuffle(upscale_factor=2)"
    assert repr(nn.PixelUnshuffle(3)) == "PixelUnshuffle(downscale_factor=3)"


def test_module_reprs_match_torch():
    torch = _torch()
    for ours, theirs in [(nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2)),
                         (nn.Upsample(size=3, mode="bilinear"),
                          torch.nn.Upsample(size=3, mode="bilinear")),
                         (nn.PixelShuffle(3), torch.nn.PixelShuffle(3)),
                         (nn.PixelUnshuffle(2), torch.nn.PixelUnshuffle(2))]:
        assert repr(ours) == repr(theirs)


def test_bilinear_upsampling_repeats_the_edge_exactly() -> None:
    """Past the last input pixel both neighbours are that pixel: the output must be it,
    bit for bit (a weighted sum of it with itself was one float32 step off)."""
    x = np.array([-0.11001077, -0.44582814, 0.7753238], np.float32).reshape(1, 1, 1, 3)
    y = F.interpolate(dlcore.tensor(x), size=(1, 5), mode="bilinear").numpy()
    assert y[0, 0, 0, -1] == x[0, 0, 0, -1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.standard_normal((1, 1, 4, 3)).astype(np.float32)
        out = F.interpolate(dlcore.tensor(a), scale_factor=2, mode="bilinear").numpy()
        # half-pixel centres: the last output row and column read only the last input's
        np.testing.assert_array_equal(out[0, 0, -1, -1], a[0, 0, -1, -1])
        np.testing.assert_array_equal(out[0, 0, 0, -1], a[0, 0, 0, -1])
