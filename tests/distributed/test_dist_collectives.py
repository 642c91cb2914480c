"""dlcore.distributed's collectives on real MPI ranks (2 and 3 processes), each checked
against its definition by the worker (workers/collectives.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("n", [2, 3])
def test_every_collective_matches_its_definition(run_ranks, n: int) -> None:
    job = run_ranks(n, "collectives.py")
    assert job.returncode == 0, job.output
    for check in ("all_reduce float/int ops", "all_reduce bitwise and bool",
                  "all_reduce views and emu", "broadcast", "all_gather", "reduce_scatter",
                  "async_op", "barrier, broadcast_object_list, sampler from the group",
                  "argument errors", f"done on {n} ranks"):
        assert f"ok {check}\n" in job.output, job.output
