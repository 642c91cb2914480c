"""dlcore.distributed without MPI ranks: argument checks, errors before init, the group of
one that a process without mpi4py gets (every collective then runs through the worker's
checks too), and the clear refusal of NCCL where it is unusable."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dlcore
import dlcore.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
# runs a script as if mpi4py were not installed (an import of it raises ImportError)
NO_MPI = "import runpy, sys; sys.modules['mpi4py'] = None; sys.argv = sys.argv[1:]; " \
         "runpy.run_path(sys.argv[0], run_name='__main__')"


def _python(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def test_queries_before_init_raise_pytorch_s_error() -> None:
    assert not dist.is_initialized() and dist.is_available()
    for query in (dist.get_rank, dist.get_world_size, dist.barrier):
        with pytest.raises(RuntimeError, match="Default process group has not been "
                                               "initialized"):
            query()
    with pytest.raises(RuntimeError, match="not been initialized"):
        dist.all_reduce(dlcore.zeros(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "gloo"}, "backend must be 'mpi', 'nccl' or None"),
    ({"init_method": "tcp://10.0.0.1:23456"}, "MPI's launcher"),
    ({"timeout": datetime.timedelta(seconds=0)}, "timeout must be positive"),
])
def test_init_arguments_are_checked(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dist.init_process_group(**kwargs)
    assert not dist.is_initialized()


def test_without_mpi4py_a_process_is_a_group_of_one() -> None:
    done = _python("-c", NO_MPI, str(WORKERS / "collectives.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok done on 1 ranks" in done.stdout


def test_without_mpi4py_more_ranks_is_an_error_that_says_what_to_install() -> None:
    code = "import dlcore.distributed as d; d.init_process_group()"
    done = _python("-c", f"import sys; sys.modules['mpi4py'] = None; {code}", WORLD_SIZE="2")
    assert done.returncode != 0 and "a world of 2 ranks needs MPI" in done.stderr, done.stderr
    assert "pip install 'dlcore[distributed]'" in done.stderr


def test_nccl_refuses_clearly_where_it_is_unusable() -> None:
    if dist.is_nccl_available() and dlcore.cuda.is_available():
        pytest.skip("NCCL is usable here")
    code = ("import sys; sys.modules['mpi4py'] = None; import dlcore.distributed as d\n"
            "try:\n    d.init_process_group('nccl')\nexcept RuntimeError as e:\n"
            "    print(e)\nprint(d.is_initialized())")
    done = _python("-c", code)
    assert "backend 'nccl' is unavailable here" in done.stdout, done.stdout + done.stderr
    assert done.stdout.strip().endswith("False")
