"""dlcore's thread budget (dlcore.threads): set_num_threads drives the BLAS pool threadpoolctl
reports, the default at import, the user's choice (set_num_threads, the environment) left
alone, and the DataLoader holding BLAS to the CPUs its threads leave, restored after."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import dlcore
from dlcore import threads
from dlcore.data import DataLoader, TensorDataset


def blas_threads() -> int:
    """What threadpoolctl itself reports for the BLAS pools (not dlcore's reading)."""
    return max(int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas")


@pytest.fixture
def default_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user choice (whatever earlier tests set), the BLAS count restored afterwards."""
    before = blas_threads()
    monkeypatch.setattr(threads, "_user_set", False)
    monkeypatch.setattr(threads, "_saved", None)
    monkeypatch.setattr(threads, "_loader_threads", 0)
    for name in threads.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    threadpool_limits(limits=before, user_api="blas")


def loader(workers: int) -> DataLoader:
    return DataLoader(TensorDataset(dlcore.arange(12)), batch_size=2, num_workers=workers)


needs_blas_pool = pytest.mark.skipif(
    not any(p["user_api"] == "blas" for p in threadpool_info()),
    reason="NumPy has no BLAS thread pool here")


@needs_blas_pool
def test_set_num_threads_sets_what_threadpoolctl_reports(default_mode: None) -> None:
    for n in (1, 2):
        dlcore.set_num_threads(n)
        assert blas_threads() == dlcore.get_num_threads() == n
    assert threads.user_choice() == "set_num_threads"
    with pytest.raises(ValueError, match="expected an int >= 1"):
        dlcore.set_num_threads(0)


@needs_blas_pool
def test_limit_is_an_explicit_choice_while_inside_and_restores(default_mode: None) -> None:
    threadpool_limits(limits=1, user_api="blas")
    with threads.limit(2):
        assert blas_threads() == 2
        assert threads.user_choice() == "set_num_threads"
    assert blas_threads() == 1
    assert threads.user_choice() is None


def test_default_is_one_thread_on_two_cpus_else_one_per_cpu() -> None:
    assert [threads.default_num_threads(c) for c in (1, 2, 3, 8)] == [1, 1, 3, 8]
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))


def _fresh_process_threads(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV}
    code = ("import dlcore, dlcore.threads as t\n"
            "print(dlcore.get_num_threads(), t.default_num_threads(), t.user_choice())")
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@needs_blas_pool
def test_import_applies_the_default_unless_the_environment_chose() -> None:
    got, default, choice = _fresh_process_threads({}).split()
    assert got == default and choice == "None"
    assert _fresh_process_threads({"OPENBLAS_NUM_THREADS": "2"}).split()[::2] == [
        "2", "OPENBLAS_NUM_THREADS=2"]


@needs_blas_pool
def test_loader_threads_hold_blas_to_the_cpus_left_and_restore(
        default_mode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 3)
    threadpool_limits(limits=2, user_api="blas")
    it = iter(loader(1))  # 3 cpus - 1 loader thread: room for 2, nothing to lower
    assert blas_threads() == 2 and threads.active_loader_threads() == 1
    list(it)
    it2 = iter(loader(2))  # 3 - 2: one BLAS thread while they run
    assert blas_threads() == 1 and threads.active_loader_threads() == 2
    assert [b[0].tolist() for b in it2][0] == [0, 1]
    assert blas_threads() == 2 and threads.active_loader_threads() == 0


@needs_blas_pool
def test_overlapping_loaders_restore_when_the_last_ends(
        default_mode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 3)
    threadpool_limits(limits=2, user_api="blas")
    first = iter(loader(2))
    second: Any = iter(loader(1))  # a _ThreadedIterator, which has close()
    assert blas_threads() == 1 and threads.active_loader_threads() == 3
    next(first)
    del first  # leaving a loop early (the finalizer) gives the threads back too
    assert threads.active_loader_threads() == 1 and blas_threads() == 2
    second.close()
    second.close()  # a second stop releases nothing more
    assert threads.active_loader_threads() == 0 and blas_threads() == 2


@needs_blas_pool
def test_loader_never_raises_the_count(default_mode: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    threadpool_limits(limits=1, user_api="blas")  # e.g. dlcore train --threads 1
    it = iter(loader(2))
    assert blas_threads() == 1
    list(it)
    assert blas_threads() == 1


@needs_blas_pool
@pytest.mark.parametrize("how", ["set_num_threads", "environment"])
def test_loader_leaves_the_users_choice_alone(how: str, default_mode: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    if how == "set_num_threads":
        dlcore.set_num_threads(2)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        threadpool_limits(limits=2, user_api="blas")
    it = iter(loader(1))
    assert blas_threads() == 2  # 2 cpus - 1 loader thread would be 1
    list(it)
    assert blas_threads() == 2


@needs_blas_pool
def test_a_choice_made_while_a_loader_runs_stands(default_mode: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    threadpool_limits(limits=2, user_api="blas")
    it = iter(loader(1))
    assert blas_threads() == 1
    dlcore.set_num_threads(1)
    list(it)
    assert blas_threads() == 1  # not "restored" to the 2 from before
