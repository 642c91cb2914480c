"""A failing rank ends the whole job with an error, quickly, never a hang: an uncaught
exception (MPI_Abort from init_process_group's excepthook), a vanished process (os._exit),
and a hung one (the collective timeout)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("mode, n, says", [
    ("raise", 2, "ValueError: rank 1 gives up at step 2"),
    ("exit", 3, "rank 2 fails (exit)"),
    ("hang", 2, "all_reduce(SUM, (15,) float32) timed out after 2 s on rank 0 of 2"),
])
def test_a_failing_rank_ends_the_job(run_ranks, mode: str, n: int, says: str) -> None:
    job = run_ranks(n, "failures.py", mode, timeout=60)
    assert job.returncode != 0, job.output
    assert says in job.output, job.output
    assert "finished: unexpected" not in job.output
    assert job.seconds < 60
    if mode != "exit":
        assert "aborting all ranks (MPI_Abort)" in job.output, job.output
