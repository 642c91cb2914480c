"""The distributed benchmark suite's workers run (tiny sizes: the figures come from
``dlcore bench distributed``), and the suite reports, rather than fails, without MPI."""

from __future__ import annotations

import pytest

from dlcore.bench import distributed as suite


def test_workers_report_one_json_line_per_case(run_ranks) -> None:
    del run_ranks  # only for its skip when mpiexec is absent
    rows = suite._job(2, ["allreduce", "4096", "65536"])
    assert [r["bytes"] for r in rows] == [4096, 65536] and all(r["seconds"] > 0 for r in rows)
    (row,) = suite._job(2, ["ddp", "8", "2"])
    assert row["seconds"] > 0


def test_without_mpiexec_the_suite_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "_mpiexec", lambda: None)
    (row,) = suite.run("cpu", quick=True)
    assert row["case"] == "skipped" and "dlcore[distributed]" in row["note"]
