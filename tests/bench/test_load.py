"""The load suite (dlcore.bench.load) and ``dlcore bench --threads``: the suite runs in quick
mode with its rows, its neighbour processes never outlive it, and --threads is applied to
the run, recorded in the JSON and undone afterwards. No timings are asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

import dlcore
from dlcore.bench import load
from dlcore.cli import main

HAS_TORCH = True
try:
    import torch
except ImportError:
    HAS_TORCH = False


def children() -> list[int]:
    """The pids whose parent is this process (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")


def test_bench_load_quick_with_threads_records_and_stops_its_neighbours(
        tmp_path: Path) -> None:
    blas_before = dlcore.get_num_threads()
    env_before = os.environ.get("OMP_NUM_THREADS")
    torch_before = torch.get_num_threads() if HAS_TORCH else None
    path = tmp_path / "load.json"
    assert main(["bench", "load", "--quick", "--threads", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["threads"]["requested"] == 1 and result["threads"]["blas"] == 1
    lenet, floor = result["results"]
    assert lenet["case"] == "lenet digits 1x8x8 N=64 train step beside 2 neighbours"
    assert lenet["blas_threads"] == 1 and lenet["neighbours"] == 2
    for row in (lenet, floor):
        assert row["median_us"] == row["loaded_us"] > 0 and row["quiet_us"] > 0
        assert row["slowdown"] == pytest.approx(row["loaded_us"] / row["quiet_us"])
    if HAS_TORCH:
        assert result["threads"]["torch"] == 1 and lenet["torch_threads"] == 1
        assert lenet["reference_slowdown"] == pytest.approx(
            lenet["reference_us"] / lenet["reference_quiet_us"])
    assert len(load.neighbour_pids) == 2
    assert not any(alive(pid) for pid in load.neighbour_pids)
    assert children() == []
    # the run's setting is undone
    assert dlcore.get_num_threads() == blas_before
    if HAS_TORCH:
        assert torch.get_num_threads() == torch_before
    assert os.environ.get("OMP_NUM_THREADS") == env_before


@pytest.mark.skipif(not any(p["user_api"] == "blas" for p in threadpool_info())
                    or len(os.sched_getaffinity(0)) < 2, reason="needs a 2-thread BLAS")
def test_bench_threads_applies_to_the_suites(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def spy(device: str, quick: bool = False) -> list[dict]:
        seen.append((dlcore.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
                     torch.get_num_threads() if HAS_TORCH else None))
        return [{"suite": "load", "case": "spy", "device": device, "median_us": 1.0}]

    monkeypatch.setattr(load, "run", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = tmp_path / "b.json"
    assert main(["bench", "load", "--threads", "2", "--json", str(path)]) == 0
    assert seen == [(2, "2", 2 if HAS_TORCH else None)]
    assert json.loads(path.read_text())["threads"]["requested"] == 2
    assert "OMP_NUM_THREADS" not in os.environ


def test_bench_threads_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "load", "--threads", "0"])
    assert exc.value.code == 2
    assert "--threads: must be an int >= 1, got 0" in capsys.readouterr().err


def test_neighbours_are_stopped_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="in the body"):
        with load.neighbours(2) as procs:
            assert all(alive(p.pid) for p in procs)
            raise RuntimeError("in the body")
    assert not any(alive(pid) for pid in load.neighbour_pids)
    assert children() == []


def test_a_neighbour_exits_by_itself_once_its_parent_is_gone() -> None:
    # a parent that starts neighbours and dies without stopping them (os._exit)
    code = ("import os, sys\nfrom dlcore.bench import load\n"
            "ctx = load.neighbours(1)\nprocs = ctx.__enter__()\n"
            "print(procs[0].pid, flush=True)\nos._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
