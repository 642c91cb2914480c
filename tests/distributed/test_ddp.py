"""DistributedDataParallel on real MPI ranks: per-rank slices of a batch reach the parameters
one process reaches on the whole batch (CNN and LSTM, SGD with momentum and Adam, ranks
starting from different weights), no_sync accumulation equals one large step, float16
compression, buffers, state_dict names and unused parameters (workers/ddp.py)."""

from __future__ import annotations

import pytest

import dlcore
from dlcore.distributed import GradBucket
from dlcore.nn.parallel import DistributedDataParallel
from dlcore.nn.parallel.reducer import FIRST_BUCKET_BYTES, make_buckets


@pytest.mark.parametrize("n", [2, 3])
def test_ddp_equals_one_process_on_the_whole_batch(run_ranks, n: int) -> None:
    job = run_ranks(n, "ddp.py")
    assert job.returncode == 0, job.output
    for check in ("cnn sgd", "cnn adam", "lstm sgd", "lstm adam",
                  "optimizer made before wrapping", "overlap:", "no_sync",
                  "fp16_compress_hook",
                  "buffers, state_dict, unused parameters, cast after wrapping"):
        assert f"ok {check}" in job.output, job.output


def test_buckets_reverse_order_one_dtype_and_capped() -> None:
    params = [dlcore.zeros(1000), dlcore.zeros(10, dtype="float64"), dlcore.zeros(300_000),
              dlcore.zeros(300_000), dlcore.zeros(5)]
    # reversed, 4 first; the first bucket holds at most 1 MiB, later ones the cap (2 MiB); a
    # float32 parameter joins the open float32 bucket, the float64 one gets its own
    buckets = make_buckets(params, cap_bytes=2 * FIRST_BUCKET_BYTES)
    assert buckets == [[4], [3], [2, 0], [1]]
    assert make_buckets(params, cap_bytes=1) == [[4], [3], [2], [1], [0]]
    assert make_buckets(params, cap_bytes=100 * FIRST_BUCKET_BYTES) == [[4], [3, 2, 0], [1]]


def test_grad_bucket_views_its_buffer_per_parameter() -> None:
    bucket = GradBucket(3, dlcore.arange(6.0), [dlcore.zeros(2, 1), dlcore.zeros(4)], [0, 2],
                        last=True)
    assert [g.tolist() for g in bucket.gradients()] == [[[0.0], [1.0]], [2.0, 3.0, 4.0, 5.0]]
    assert bucket.index() == 3 and bucket.is_last() and len(bucket.parameters()) == 2


def test_wrapping_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedDataParallel(dlcore.nn.Linear(2, 2))
