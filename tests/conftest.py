"""Shared fixtures: every op test runs on each device (cpu, emu, cuda).

``cuda`` skips cleanly where no GPU is usable. The emulator runs in its checked mode
(``DLCORE_EMU_CHECK=1``: out-of-bounds and barrier checks) throughout the suite.

TF32: ``dlcore.backends.cudnn.allow_tf32`` is True by default, as in PyTorch, so float32
convolutions on emu/cuda run on the tensor cores with 10-bit-mantissa inputs. The suite's
float32 tests check float32 arithmetic against float32-accurate bounds, so every test runs
with TF32 off unless it is marked ``tf32_default`` (the default itself) or sets the flag
itself (tests/ops/test_conv_tc.py, which checks TF32 against bounds derived for it).
"""

from __future__ import annotations

import os

os.environ["DLCORE_EMU_CHECK"] = "1"  # before dlcore builds any emulator runner

import pytest  # noqa: E402

from dlcore.backends import cudnn  # noqa: E402
from dlcore.device import device_count  # noqa: E402

DEVICES = ("cpu", "emu", "cuda")
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """Workers for ``-n auto`` (pyproject's addopts): one per usable core, at most
    MAX_WORKERS; xdist's own ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still chooses (None defers to
    xdist). The cap: on a GPU machine every worker holds a CUDA context on the same device,
    and the MPI tests start 2-3 ranks each, so more workers add contention, not speed."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


def skip_unless_available(device: str) -> None:
    """Skip the calling test when ``device`` cannot run here (``cuda`` without a GPU)."""
    if device.startswith("cuda") and device_count() == 0:
        pytest.skip("no CUDA device")


@pytest.fixture(autouse=True)
def _float32_convolutions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                          ) -> None:
    if request.node.get_closest_marker("tf32_default") is None:
        monkeypatch.setattr(cudnn, "allow_tf32", False)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Device name for a test: parametrised over cpu, emu and cuda (skipped without GPU)."""
    skip_unless_available(request.param)
    return request.param
