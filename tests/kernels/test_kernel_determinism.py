"""Every product kernel (kernels/*.cu) gives bit-identical results under several block orders
and fiber orders (``DLCORE_EMU_SEED``), launched through dlcore's own paths on the emu device
(``dlcore/ops/*_cuda.py``, the recurrent op, the optimizers); a planted kernel whose result
depends on the block order fails the same check. No product kernel is documented as
non-deterministic: none is exempt.

Shapes are small but span several blocks, so the block order matters wherever it could.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.device import Device
from dlcore.kernels import KernelSource, kernel_source, product_sources
from dlcore.nn.parameter import Parameter
from dlcore.ops import conv_depthwise_cuda, conv_gemm_cuda, conv_tc_cuda, pool_cuda
from dlcore.ops.rnn import GATES, rnn_layer
from kernel_samples import CU_DIR

EMU = Device("emu")
DETERMINISM_SEEDS = (0, 1, 2, 7, 1234)  # seed 0 runs the blocks in index order, others permute
Outputs = Sequence[Any]


def assert_deterministic(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Outputs],
                         seeds: Sequence[int] = DETERMINISM_SEEDS) -> None:
    """Run ``run`` (returning arrays) once per emulator seed -- each a different fiber order in
    every block and a different block order -- and assert that every output has the same bits
    as under the first seed."""
    first: list[np.ndarray] = []
    for seed in seeds:
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        outputs = [np.ascontiguousarray(np.asarray(o)) for o in run()]
        if not first:
            first = outputs
            continue
        for k, (a, b) in enumerate(zip(first, outputs)):
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                differ = int((a.view(np.uint8) != b.view(np.uint8)).reshape(a.size, -1)
                             .any(axis=1).sum()) if a.shape == b.shape else a.size
                raise AssertionError(f"output {k} differs between DLCORE_EMU_SEED={seeds[0]} "
                                     f"and {seed}: {differ} of {a.size} elements "
                                     f"(first {a.ravel()[:4]}, then {b.ravel()[:4]})")


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The ``file:entry`` names of the kernels fetched through the emu runner during a test."""
    names: set[str] = set()
    runner = EMU.kernels
    fetch = runner.function

    def recording(source: Any, name: str) -> Any:
        names.add(f"{kernel_source(source).name}:{name}")
        return fetch(source, name)

    monkeypatch.setattr(runner, "function", recording)
    return names


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- one case per product kernel family; each returns its outputs --------------------------
def conv_case(dtype: type, grouped: bool, wide: bool = False, mid: bool = False) -> Outputs:
    rng = _rng(0)
    if wide:  # float32 runs the 128 x 128 tiles (rows >= 512, columns > 64), stride phases
        x_shape, w_shape = (2, 72, 31, 31), (80, 72, 3, 3)
        stride, padding, dilation, groups = 2, 1, 1, 1
    elif mid:  # float32 runs the 128 x 64 tiles (rows >= 512, columns <= 64)
        x_shape, w_shape = (2, 64, 16, 16), (48, 64, 3, 3)
        stride, padding, dilation, groups = 1, 1, 1, 1
    elif grouped:  # strided, dilated, two groups: grid z = 2 x 4 stride phases in backward
        x_shape, w_shape = (2, 4, 11, 11), (6, 2, 3, 3)
        stride, padding, dilation, groups = 2, 2, 2, 2
    else:  # N*Ho*Wo = 324: backward-weight splits K in two and runs its reduce kernel
        x_shape, w_shape = (4, 3, 9, 9), (5, 3, 3, 3)
        stride, padding, dilation, groups = 1, 1, 1, 1
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    out = (x_shape[2] + 2 * padding - dilation * (w_shape[2] - 1) - 1) // stride + 1
    geo = ((stride, stride), (padding, padding), (dilation, dilation), groups)
    y = conv_gemm_cuda.conv2d_forward(EMU, x, w, (out, out), *geo)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = conv_gemm_cuda.conv2d_backward_data(EMU, gy, w, x.shape, *geo)
    gw = conv_gemm_cuda.conv2d_backward_weight(EMU, x, gy, w.shape, *geo)
    return [y, gx, gw]


def conv_tc_case(dtype: type) -> Outputs:
    """The tensor-core kernels (kernels/conv2d_tc.cu: float32 as TF32, float16). N*Ho*Wo = 324:
    backward-weight runs two float partials and the reduce; then strided, dilated, two groups."""
    rng, outputs = _rng(6), []
    for x_shape, w_shape, s, p, d, groups in (((4, 3, 9, 9), (5, 3, 3, 3), 1, 1, 1, 1),
                                              ((2, 4, 11, 11), (6, 2, 3, 3), 2, 2, 2, 2)):
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        out = (x_shape[2] + 2 * p - d * (w_shape[2] - 1) - 1) // s + 1
        geo = ((s, s), (p, p), (d, d), groups)
        y = conv_tc_cuda.conv2d_forward(EMU, x, w, (out, out), *geo)
        gy = rng.standard_normal(y.shape).astype(dtype)
        outputs += [y, conv_tc_cuda.conv2d_backward_data(EMU, gy, w, x.shape, *geo),
                    conv_tc_cuda.conv2d_backward_weight(EMU, x, gy, w.shape, *geo)]
    return outputs


def conv_depthwise_case(dtype: type) -> Outputs:
    """The depthwise kernels (kernels/conv2d_depthwise.cu), a layer per instantiation: 3x3 and
    5x5 at stride 1 and 2 (stride 2: the backward-data gather), then the runtime-size path
    (dilation 2, multiplier 2). The first, 17 images of 4 x 33, splits backward-weight in two
    and runs its reduce kernel."""
    rng, outputs = _rng(7), []
    for x_shape, k, s, p, d, mult in (((17, 1, 4, 33), 3, 1, 1, 1, 1),
                                      ((2, 3, 9, 10), 3, 2, 1, 1, 1),
                                      ((1, 2, 9, 9), 5, 1, 2, 1, 1),
                                      ((2, 2, 11, 9), 5, 2, 2, 1, 1),
                                      ((2, 2, 9, 10), 3, 1, 2, 2, 2)):
        c = x_shape[1]
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal((c * mult, 1, k, k)).astype(dtype)
        out_hw = ((x_shape[2] + 2 * p - d * (k - 1) - 1) // s + 1,
                  (x_shape[3] + 2 * p - d * (k - 1) - 1) // s + 1)
        geo = ((s, s), (p, p), (d, d), c)
        y = conv_depthwise_cuda.conv2d_forward(EMU, x, w, out_hw, *geo)
        gy = rng.standard_normal(y.shape).astype(dtype)
        outputs += [y, conv_depthwise_cuda.conv2d_backward_data(EMU, gy, w, x.shape, *geo),
                    conv_depthwise_cuda.conv2d_backward_weight(EMU, x, gy, w.shape, *geo)]
    return outputs


def unscale_case(dtype: type) -> Outputs:
    """GradScaler's pass over a 640-element bucket (three blocks) holding an inf."""
    rng = _rng(4)
    params = [Parameter(dlcore.tensor(rng.standard_normal(s).astype(dtype), device="emu"))
              for s in ((300,), (17, 20))]
    opt = optim.SGD(params, lr=0.1)
    weights = [dlcore.tensor(rng.standard_normal(p.shape).astype(dtype), device="emu")
               for p in params]
    dlcore.autograd.backward([(p * w).sum() for p, w in zip(params, weights)])  # into the slots
    params[1].grad.array[3, 4] = np.inf
    found = opt._unscale_grads_(1 / 1024)
    return [p.grad.numpy().copy() for p in params] + [np.array([found])]


def pool_case(dtype: type) -> Outputs:
    rng = _rng(1)
    x = rng.integers(0, 5, (2, 4, 17, 17)).astype(dtype)  # ties: the first maximum wins
    kernel, stride, padding, dilation = (3, 3), (2, 2), (1, 1), (1, 1)
    out_hw = (9, 9)  # overlapping windows: backward gathers from several outputs
    y, indices = pool_cuda.max_pool2d_forward(EMU, x, out_hw, kernel, stride, padding, dilation)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = pool_cuda.max_pool2d_backward(EMU, gy, indices, x.shape, kernel, stride, padding,
                                       dilation)
    ya = pool_cuda.avg_pool2d_forward(EMU, x, out_hw, kernel, stride, padding, True, None)
    ga = pool_cuda.avg_pool2d_backward(EMU, gy, x.shape, kernel, stride, padding, False, 5)
    return [y, indices, gx, ya, ga]


def rnn_case(mode: str, dtype: type) -> Outputs:
    T, N, I, H = 3, 4, 3, 80  # N * H = 320 states: two blocks of 256 threads
    G = GATES[mode]
    rng = _rng(2)

    def tensor(*shape: int, scale: float = 1.0) -> dlcore.Tensor:
        data = rng.uniform(-scale, scale, shape).astype(dtype)
        return dlcore.tensor(data, device="emu", requires_grad=True)

    x, h0 = tensor(T, N, I), tensor(N, H)
    c0 = tensor(N, H) if mode == "lstm" else None
    weights = [tensor(G * H, I, scale=0.5), tensor(G * H, H, scale=0.1), tensor(G * H),
               tensor(G * H)]
    out = rnn_layer(x, h0, c0, *weights, mode=mode, reverse=True, lengths=[3, 1, 2, 3])
    loss = None
    for o in out:
        term = (o * dlcore.tensor(rng.standard_normal(o.shape).astype(dtype), device="emu")).sum()
        loss = term if loss is None else loss + term
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    return [o.numpy() for o in out] + [g.numpy() for g in dlcore.autograd.grad(loss, inputs)]


OPTIMIZERS = [(optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
              (optim.Adam, {"amsgrad": True, "weight_decay": 0.1}),
              (optim.AdamW, {"lr": 0.01}),
              (optim.RMSprop, {"momentum": 0.5, "centered": True, "weight_decay": 0.1}),
              (optim.Adagrad, {"lr_decay": 0.05, "weight_decay": 0.1})]


def optim_case(cls: type, options: dict, dtype: type) -> Outputs:
    rng = _rng(3)
    params = [Parameter(dlcore.tensor(rng.standard_normal(s).astype(dtype), device="emu"))
              for s in ((300,), (17, 20))]  # one 640-element group: three blocks
    opt = cls(params, **options)
    for _ in range(3):
        for p in params:
            p.grad = dlcore.tensor(rng.standard_normal(p.shape).astype(dtype), device="emu")
        opt.step()
    return [p.numpy().copy() for p in params]


def capturable_case(dtype: type) -> Outputs:
    """A scaled step with capturable Adam: the device step count (count_steps), the unscale
    pass, the update reading found_inf, and the scale update (amp_update_scale)."""
    rng = _rng(5)
    params = [Parameter(dlcore.tensor(rng.standard_normal(s).astype(dtype), device="emu"))
              for s in ((300,), (17, 20))]
    opt = optim.Adam(params, lr=0.01, capturable=True)
    scaler = dlcore.amp.GradScaler("emu", init_scale=2.0 ** 8, growth_interval=2)
    for _ in range(3):
        weights = [dlcore.tensor(rng.standard_normal(p.shape).astype(dtype), device="emu")
                   for p in params]
        opt.zero_grad()
        scaler.scale(sum((p * w).sum() for p, w in zip(params, weights))).backward()
        scaler.step(opt)
        scaler.update()
    return [p.numpy().copy() for p in params] + [np.array([scaler.get_scale()])]


def philox_case(dtype: type) -> Outputs:
    """Graph-safe random numbers: 1000 draws (four blocks of 256 threads) of each kind."""
    from dlcore.ops.philox_cuda import PhiloxStream

    stream = PhiloxStream(EMU, (5, 6))
    out = [stream.draw("uniform", (1000,), 0.0, 1.0, dtype),
           stream.draw("normal", (999,), 0.0, 1.0, dtype)]
    stream.advance()
    return [o.copy() for o in out] + [stream.base.copy()]


DTYPES = [np.float32, np.float64]
CASES: dict[str, Callable[[type], Outputs]] = {
    "conv2d": lambda dt: [*conv_case(dt, False), *conv_case(dt, True),
                          *conv_case(dt, False, wide=True), *conv_case(dt, False, mid=True)],
    "conv2d_depthwise": conv_depthwise_case,
    "pool2d": pool_case,
    **{f"rnn-{mode}": (lambda dt, mode=mode: rnn_case(mode, dt)) for mode in GATES},
    **{f"optim-{cls.__name__}": (lambda dt, cls=cls, options=options: optim_case(cls, options, dt))
       for cls, options in OPTIMIZERS},
    "optim-unscale": unscale_case,
    "optim-capturable": capturable_case,
    "philox": philox_case,
}
# Entry points each case must launch (checked against what it fetched), and together: all.
FAMILY_SOURCE = {"conv2d": "conv2d.cu", "conv2d_depthwise": "conv2d_depthwise.cu",
                 "pool2d": "pool2d.cu", "rnn": "rnn_cell.cu", "optim": "optim.cu",
                 "philox": "philox.cu"}
# The families whose cases run in float16 too (their __half kernels; the tensor-core and the
# float16 pooling kernels have tests of their own below)
HALF_FAMILIES = ("rnn", "optim", "philox")
BF16 = np.dtype(dlcore.bfloat16)
BF16_FAMILIES = ("rnn",)  # with __nv_bfloat16 kernels (pooling: its own test below)


def case_dtypes(case: str) -> list[Any]:
    family = case.partition("-")[0]
    return DTYPES + ([np.float16] if family in HALF_FAMILIES else []) + (
        [BF16] if family in BF16_FAMILIES else [])


@pytest.mark.parametrize("case, dtype", [(c, d) for c in CASES for d in case_dtypes(c)],
                         ids=lambda v: np.dtype(v).name if isinstance(v, type | np.dtype) else v)
def test_product_kernel_is_deterministic(monkeypatch: pytest.MonkeyPatch, launched: set[str],
                                         case: str, dtype: type) -> None:
    assert_deterministic(monkeypatch, lambda: CASES[case](dtype))
    source = FAMILY_SOURCE[case.partition("-")[0]]
    assert any(name.startswith(f"{source}:") for name in launched), launched


TC_DTYPES = [np.float32, np.float16]  # what the tensor-core kernels take


@pytest.mark.parametrize("dtype", TC_DTYPES, ids=lambda d: np.dtype(d).name)
def test_tensor_core_conv_is_deterministic(monkeypatch: pytest.MonkeyPatch, launched: set[str],
                                           dtype: type) -> None:
    assert_deterministic(monkeypatch, lambda: conv_tc_case(dtype))
    assert any(name.startswith("conv2d_tc.cu:") for name in launched), launched


def test_float16_pool_is_deterministic(monkeypatch: pytest.MonkeyPatch,
                                       launched: set[str]) -> None:
    """pool2d has __half kernels too (storage half, arithmetic float)."""
    assert_deterministic(monkeypatch, lambda: pool_case(np.float16))
    assert any(name.startswith("pool2d.cu:") and "<__half>" in name for name in launched)


def test_bfloat16_pool_is_deterministic(monkeypatch: pytest.MonkeyPatch,
                                        launched: set[str]) -> None:
    """pool2d's __nv_bfloat16 kernels (storage bfloat16, arithmetic float)."""
    assert_deterministic(monkeypatch, lambda: pool_case(BF16))
    assert any(name.startswith("pool2d.cu:") and "<__nv_bfloat16>" in name for name in launched)


def test_every_product_entry_point_is_covered(monkeypatch: pytest.MonkeyPatch,
                                              launched: set[str]) -> None:
    monkeypatch.setenv("DLCORE_EMU_SEED", "3")
    for name, case in CASES.items():
        for dtype in case_dtypes(name):
            case(dtype)
    for dtype in TC_DTYPES:
        conv_tc_case(dtype)
    pool_case(np.float16)
    pool_case(BF16)
    declared = {f"{p.name}:{e}" for p in product_sources() for e in kernel_source(p).entry_points}
    assert declared <= launched, f"no determinism case launches {sorted(declared - launched)}"


# ---- the samples of the other emulator features are deterministic too -----------------------
SAMPLES = CU_DIR / "samples_pipeline_coop.cu"


def test_pipelined_and_cooperative_samples_are_deterministic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from test_emu_pipeline_coop import normalize, row_sums

    x = _rng(4).standard_normal((5, 4 * 200)).astype(np.float32)
    assert_deterministic(monkeypatch, lambda: [row_sums(x), normalize(x.ravel(), 12)])


# ---- block order --------------------------------------------------------------------------
ORDER = KernelSource("block_order.cu", r"""
extern "C" __global__ void record_block_order(int* order, int* next) {
  if (threadIdx.x == 0) {
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    order[atomicAdd(next, 1)] = b;
  }
}
""")


def _block_order(grid: tuple[int, ...]) -> np.ndarray:
    order = np.full(int(np.prod(grid)), -1, np.int32)
    EMU.kernels.function(ORDER, "record_block_order")(grid, (2,), (order, np.zeros(1, np.int32)))
    return order


def test_blocks_run_in_a_seeded_order(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = (5, 3, 2)
    monkeypatch.setenv("DLCORE_EMU_SEED", "0")
    np.testing.assert_array_equal(_block_order(grid), np.arange(30))
    orders = []
    for seed in (1, 2):
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        order = _block_order(grid)
        np.testing.assert_array_equal(np.sort(order), np.arange(30))  # each block once
        np.testing.assert_array_equal(_block_order(grid), order)  # the seed replays it
        orders.append(order)
    assert not np.array_equal(orders[0], np.arange(30))
    assert not np.array_equal(orders[0], orders[1])
    small = set()
    for seed in range(1, 7):  # a grid of a few blocks is shuffled too
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        small.add(tuple(_block_order((4,))))
    assert len(small) > 2 and all(sorted(order) == [0, 1, 2, 3] for order in small)


# ---- the planted bug: a result that depends on the block order ------------------------------
def test_order_dependent_atomic_accumulation_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks, threads = 8, 32
    x = np.zeros(blocks * threads, np.float32)
    # Block partials 2^24, 1, ..., 1, -2^24: each 1 added after 2^24 rounds away (to even).
    x[::threads] = [2.0**24, 1, 1, 1, 1, 1, 1, -(2.0**24)]
    run = EMU.kernels.function(CU_DIR / "planted_bugs_pipeline_coop.cu", "total_by_atomic_add")

    def total() -> Outputs:
        out = np.zeros(1, np.float32)
        run((blocks,), (threads,), (x, out, np.int64(x.size)))
        return [out]

    with pytest.raises(AssertionError, match=r"output 0 differs between DLCORE_EMU_SEED=0 and "):
        assert_deterministic(monkeypatch, total)


def test_the_determinism_check_passes_an_order_independent_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(CU_DIR / "samples.cu")
    x = _rng(5).standard_normal(3000).astype(np.float32)

    def partial_sums() -> Outputs:
        partial = np.zeros(4, np.float32)
        EMU.kernels.function(path, "block_sum<float>")((4,), (256,),
                                                       (x, partial, np.int64(x.size)))
        return [partial]

    assert_deterministic(monkeypatch, partial_sums)
