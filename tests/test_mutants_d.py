"""Behaviour pinned down for mutation-testing survivors (mutmut over data, io, the
convolutions and einsum): each test checks something no test of the suite checked before,
against an independent reference (NumPy, a plain loop, PyTorch's documented semantics, or
values worked out by hand)."""

from __future__ import annotations

import gc
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from op_check import direct_conv2d

import dlcore
import dlcore.nn.functional as F
from dlcore.data import DistributedSampler, ShardDataset, random_split, write_shards
from dlcore.data import datasets as builtin_datasets
from dlcore.device import Device
from dlcore.kernels import recorded_launches


# ---- data ---------------------------------------------------------------------------------


def test_random_split_of_an_empty_dataset_into_no_parts() -> None:
    """random_split(empty, []) is allowed (the counts sum to the length, 0) and gives no
    subsets, as in PyTorch; lengths that do not sum to the length still raise."""
    assert random_split([], [], generator=0) == []
    with pytest.raises(ValueError, match=r"random_split: lengths \[\] must be non-negative "
                                         r"and sum to the dataset length 3"):
        random_split([1, 2, 3], [], generator=0)


def test_adding_problem_values_are_uniform_in_0_1() -> None:
    """adding_problem's channel 0 holds values in [0, 1] (as documented), spread over the
    whole interval; the target is the sum of the two marked values."""
    x, y = (t.numpy() for t in builtin_datasets.adding_problem(500, seq_len=8, seed=3).tensors)
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert values.mean() == pytest.approx(0.5, abs=0.02)  # uniform: mean 1/2
    np.testing.assert_allclose(y[:, 0], (values * markers).sum(axis=1), rtol=1e-6)


def test_adding_problem_first_marker_can_be_any_step_of_the_first_half() -> None:
    """One marker falls in each half of the sequence, anywhere in it: over many sequences
    the first marker takes every step 0..T/2-1 (step 0 included) and the second every step
    T/2..T-1; seq_len=2 (the smallest allowed) marks steps 0 and 1."""
    x = builtin_datasets.adding_problem(600, seq_len=6, seed=1).tensors[0].numpy()
    markers = x[..., 1]
    assert (markers.sum(axis=1) == 2).all()
    first = markers[:, :3].argmax(axis=1)
    second = 3 + markers[:, 3:].argmax(axis=1)
    assert (markers[:, :3].sum(axis=1) == 1).all() and (markers[:, 3:].sum(axis=1) == 1).all()
    assert set(first.tolist()) == {0, 1, 2}
    assert set(second.tolist()) == {3, 4, 5}
    tiny = builtin_datasets.adding_problem(4, seq_len=2).tensors[0].numpy()
    np.testing.assert_array_equal(tiny[..., 1], np.ones((4, 2), np.float32))


def test_distributed_sampler_without_a_group_names_the_missing_rank() -> None:
    """Without an initialized process group, a DistributedSampler given num_replicas but no
    rank raises naming rank (lowercase, the argument's name) and how to fix it."""
    assert not dlcore.distributed.is_initialized()
    with pytest.raises(RuntimeError, match=r"^DistributedSampler: rank not given and the "
                                           r"default process group has not been initialized"):
        DistributedSampler(range(10), num_replicas=2)
    with pytest.raises(RuntimeError, match=r"^DistributedSampler: num_replicas not given"):
        DistributedSampler(range(10), rank=0)


def _peak_while_streaming(ds: ShardDataset) -> tuple[int, int]:
    """(samples seen, peak traced bytes) while iterating ``ds`` and dropping each sample."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        count = 0
        for (sample,) in ds:
            count += 1
            del sample
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_shard_dataset_reads_wide_rows_in_chunks_of_about_4_mib(tmp_path: Path) -> None:
    """ShardDataset reads a shard in chunks of about 4 MiB *of rows* (the module docstring):
    for rows of 128 KiB (a 2-D field) a 16 MiB shard is streamed holding a few chunks at a
    time, never the whole shard."""
    rows, width = 128, 32768  # float32: 128 KiB a row, 16 MiB the shard
    write_shards(tmp_path, {"x": np.ones((rows, width), np.float32)}, shard_size=rows)
    ds = ShardDataset(tmp_path, shuffle=False)
    count, peak = _peak_while_streaming(ds)
    assert count == rows
    assert peak < 14 * 2**20, f"peak {peak / 2**20:.1f} MiB streaming a 16 MiB shard"


def test_shard_dataset_reads_rows_larger_than_a_chunk_one_at_a_time(tmp_path: Path) -> None:
    """A row larger than the 4 MiB chunk is read on its own (a chunk is at least one row,
    and no more than needed): streaming four 4 MiB+ rows never holds four of them."""
    rows, width = 4, (4 << 20) // 4 + 1  # float32: 4 MiB + 4 bytes a row
    write_shards(tmp_path, {"x": np.ones((rows, width), np.float32)}, shard_size=rows)
    ds = ShardDataset(tmp_path, shuffle=False)
    count, peak = _peak_while_streaming(ds)
    assert count == rows
    assert peak < 3.5 * width * 4, f"peak {peak / 2**20:.1f} MiB for 4 MiB rows"


# ---- io -----------------------------------------------------------------------------------

def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def test_torch_checkpoint_tensor_in_a_tuple_goes_to_map_location(tmp_path: Path) -> None:
    """A tensor inside a tuple of a torch.save checkpoint is loaded onto map_location, like
    one directly in the dict (torch.load moves every tensor, however nested)."""
    persistent_id = (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") +
                     _text("cpu") + b"I4\ntQ")
    rebuild = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + b"I0\n" +
               b"(I4\nt" + b"(I1\nt" + b"\x89}tR")
    # {"w": (tensor,), "v": tensor}: TUPLE1 (0x85) wraps the first rebuilt tensor
    payload = (b"\x80\x02}(" + _text("w") + rebuild + b"\x85" + _text("v") + rebuild +
               b"u.")
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    loaded = dlcore.load(path, map_location="emu")
    assert isinstance(loaded["w"], tuple) and len(loaded["w"]) == 1
    (inner,) = loaded["w"]
    assert inner.device == Device("emu") and loaded["v"].device == Device("emu")
    assert inner.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_load_from_a_reader_returning_text_says_to_open_in_binary_mode() -> None:
    """A file-like object whose read() returns str (not a TextIOBase) is refused with a
    TypeError naming load and telling to open the file in binary mode ('rb')."""

    class TextReader:
        def read(self) -> str:
            return "not bytes"

    with pytest.raises(TypeError, match=r"^load: f\.read\(\) returned str, not bytes; open "
                                        r"the file in binary mode \('rb'\)$"):
        dlcore.load(TextReader())


# ---- ops: conv ----------------------------------------------------------------------------

def test_conv2d_dtype_mismatch_error_without_bias_lists_input_and_weight_only() -> None:
    """A float64 input into a float32 weight (no bias) raises naming conv2d and both dtypes,
    with no bias part, and how to cast either side."""
    x = dlcore.tensor(np.ones((1, 1, 3, 3)))
    w = dlcore.tensor(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match=r"^conv2d: input type \(float64\) and weight type "
                                           r"\(float32\) should be the same \(input float64, "
                                           r"weight float32\); cast the input with "
                                           r"\.to\(float32\) or the module with "
                                           r"\.to\(float64\)$"):
        F.conv2d(x, w)


def test_conv2d_weight_gradient_differentiated_in_the_output_gradient() -> None:
    """Double backward through the weight gradient: gw = dL/dw for an upstream gradient v
    requiring grad, then d sum(gw) / dv is the convolution of x with an all-ones kernel
    (sum(gw) = sum over n, f, pixels of v times the window sum), with stride 2 and
    padding 1 kept."""
    rng = np.random.default_rng(0)
    xd, wd = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    x = dlcore.tensor(xd, requires_grad=True)
    w = dlcore.tensor(wd, requires_grad=True)
    y = F.conv2d(x, w, stride=2, padding=1)
    assert y.shape == (2, 4, 3, 3)
    v = dlcore.tensor(rng.standard_normal(y.shape), requires_grad=True)
    (gw,) = dlcore.autograd.grad(y, w, grad_outputs=v, create_graph=True)
    want_gw = np.zeros_like(wd)  # gw[f, c, i, j] = sum v[n, f, p, q] x_pad[n, c, 2p+i, 2q+j]
    xp = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            want_gw[:, :, i, j] = np.einsum("nfpq,ncpq->fc", v.numpy(),
                                            xp[:, :, i:i + 5:2, j:j + 5:2])
    np.testing.assert_allclose(gw.numpy(), want_gw, rtol=1e-10, atol=1e-12)
    (gv,) = dlcore.autograd.grad(gw.sum(), v)
    ones = direct_conv2d(xd, np.ones((1, 3, 3, 3)), (2, 2), (1, 1))
    np.testing.assert_allclose(gv.numpy(), np.broadcast_to(ones, y.shape), rtol=1e-10,
                               atol=1e-12)


def test_conv2d_1x1_kernel_with_a_stride_on_cpu() -> None:
    """A 1x1 kernel with stride (2, 1) (not a plain per-pixel GEMM: it skips rows) gives
    the strided pointwise product, and its gradients match the direct reference."""
    rng = np.random.default_rng(1)
    xd, wd = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 1, 1))
    x = dlcore.tensor(xd, requires_grad=True)
    w = dlcore.tensor(wd, requires_grad=True)
    y = F.conv2d(x, w, stride=(2, 1))
    want = np.einsum("fc,nchw->nfhw", wd[:, :, 0, 0], xd[:, :, ::2, :])
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12)
    g = rng.standard_normal(want.shape)
    y.backward(dlcore.tensor(g))
    gx = np.zeros_like(xd)
    gx[:, :, ::2, :] = np.einsum("fc,nfhw->nchw", wd[:, :, 0, 0], g)
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=1e-12)
    gw = np.einsum("nfhw,nchw->fc", g, xd[:, :, ::2, :])[:, :, None, None]
    np.testing.assert_allclose(w.grad.numpy(), gw, rtol=1e-12)


def test_float32_conv2d_on_cpu_builds_float32_columns() -> None:
    """A float32 convolution on cpu computes in float32 (as PyTorch): its im2col columns
    (one image's, about 1.9 MiB here) take 4 bytes an element, so the forward's peak
    traced memory stays well under twice their float32 size (float64 temporaries would
    double it), and the output is float32 and right."""
    rng = np.random.default_rng(4)
    xd = rng.standard_normal((1, 32, 64, 64)).astype(np.float32)
    wd = rng.standard_normal((8, 32, 2, 2)).astype(np.float32)
    x, w = dlcore.tensor(xd), dlcore.tensor(wd)
    F.conv2d(x, w)  # warm up (imports, caches) outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        y = F.conv2d(x, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    columns = 63 * 63 * (2 * 2 * 32) * 4  # P x K float32
    assert peak < 1.75 * columns, f"peak {peak / 2**20:.2f} MiB, columns {columns / 2**20:.2f}"
    assert y.dtype == np.float32
    want = np.einsum("nchw,fc->nfhw", xd[:, :, :63, :63].astype(np.float64), wd[:, :, 0, 0])
    for i, j in ((0, 1), (1, 0), (1, 1)):
        want += np.einsum("nchw,fc->nfhw", xd[:, :, i:i + 63, j:j + 63].astype(np.float64),
                          wd[:, :, i, j])
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)


def test_conv2d_3x3_on_channels_last_64_channels_keeps_channels_last() -> None:
    """A channels-last input gives a channels-last output (PyTorch's memory-format rule),
    also for the 64-channel 3x3 stride-1 shapes (14x14 and larger) the cpu path computes
    by Winograd; the values match the direct convolution."""
    rng = np.random.default_rng(2)
    xd = rng.standard_normal((1, 64, 14, 14))
    wd = rng.standard_normal((64, 64, 3, 3)) / 24
    x = dlcore.tensor(xd).contiguous(memory_format=dlcore.channels_last)
    y = F.conv2d(x, dlcore.tensor(wd), padding=1)
    assert y.shape == (1, 64, 14, 14)
    assert y.is_contiguous(memory_format=dlcore.channels_last)
    np.testing.assert_allclose(y.numpy(), direct_conv2d(xd, wd, padding=(1, 1)), rtol=1e-9,
                               atol=1e-11)


def test_depthwise_weight_gradient_keeps_channels_apart_with_an_inf_input() -> None:
    """Depthwise (groups == C): channel 0's weight gradient depends on channel 0 of the
    input only, so an inf in channel 1 (its first pixel) makes channel 1's tap (0, 0)
    gradient inf and leaves channel 0's gradient finite and exact."""
    rng = np.random.default_rng(3)
    xd = rng.standard_normal((1, 2, 5, 12))
    xd[0, 1, 0, 0] = np.inf
    x = dlcore.tensor(xd)
    w = dlcore.tensor(rng.standard_normal((2, 1, 3, 3)), requires_grad=True)
    F.conv2d(x, w, groups=2).sum().backward()
    gw = w.grad.numpy()
    want = np.zeros((2, 1, 3, 3))
    with np.errstate(invalid="ignore"):
        for i in range(3):
            for j in range(3):
                want[:, 0, i, j] = xd[0, :, i:i + 3, j:j + 10].sum(axis=(1, 2))
    assert np.isfinite(gw[0]).all()
    np.testing.assert_allclose(gw[0], want[0], rtol=1e-12)
    assert gw[1, 0, 0, 0] == np.inf
    np.testing.assert_allclose(gw[1].ravel()[1:], want[1].ravel()[1:], rtol=1e-12)


def test_1x1_conv_on_emu_routes_float16_to_the_tensor_cores_and_float64_to_blas() -> None:
    """On a kernel device a 1x1 stride-1 convolution is a plain GEMM through xp.matmul (no
    kernel of ours: recorded_launches sees none) in float64, while float16 goes to the
    tensor-core kernels (which sum in float and round once: 2048 + eight 1s is 2056, exact
    in float16), as dlcore.ops.conv_cuda documents."""
    emu = Device("emu")
    for dtype, tensor_cores in ((np.float16, True), (np.float64, False)):
        xd = np.ones((1, 9, 1, 1), dtype)
        xd[0, 0] = 2048.0
        x = dlcore.tensor(xd, device=emu)
        w = dlcore.tensor(np.ones((1, 9, 1, 1), dtype), device=emu)
        with recorded_launches() as launches:
            y = F.conv2d(x, w)
        kernels = [rec.kernel for rec in launches]
        if tensor_cores:
            assert kernels and all(k.startswith("conv2d_tc.cu:") for k in kernels), kernels
        else:
            assert kernels == []
        assert y.dtype == dtype
        assert y.numpy().ravel().tolist() == [2056.0]


def test_float16_conv_on_emu_of_an_empty_batch_or_no_channels_with_bias() -> None:
    """On emu in float16 (the tensor-core path): an empty batch gives an empty output of
    the right shape, and an input with no channels gives every output its bias."""
    emu = Device("emu")
    bias = dlcore.tensor(np.array([1.0, -2.0, 0.5], np.float16), device=emu)
    w = dlcore.tensor(np.ones((3, 2, 3, 3), np.float16), device=emu)
    empty = F.conv2d(dlcore.tensor(np.ones((0, 2, 4, 4), np.float16), device=emu), w, bias)
    assert empty.shape == (0, 3, 2, 2) and empty.dtype == np.float16
    x0 = dlcore.tensor(np.ones((1, 0, 4, 4), np.float16), device=emu)
    w0 = dlcore.tensor(np.ones((3, 0, 3, 3), np.float16), device=emu)
    y = F.conv2d(x0, w0, bias)
    np.testing.assert_array_equal(
        y.numpy(), np.broadcast_to(np.array([1.0, -2.0, 0.5], np.float16)[:, None, None],
                                   (1, 3, 2, 2)))


# ---- ops: einsum --------------------------------------------------------------------------

def test_einsum_gradient_of_a_broadcast_operand_sums_over_the_broadcast_dim() -> None:
    """einsum broadcasts a size-1 dim against the other operand's (as torch.einsum); the
    gradient of the broadcast operand sums over that dim: d/da sum_ij a[0, j] b[i, j] =
    sum_i b[i, j]."""
    ad, bd = np.array([[1.0, 2.0, 3.0]]), np.arange(6.0).reshape(2, 3)
    a = dlcore.tensor(ad, requires_grad=True)
    b = dlcore.tensor(bd, requires_grad=True)
    out = dlcore.einsum("ij,ij->ij", a, b)
    np.testing.assert_array_equal(out.numpy(), ad * bd)
    out.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), bd.sum(axis=0, keepdims=True))
    np.testing.assert_array_equal(b.grad.numpy(), np.broadcast_to(ad, (2, 3)))
