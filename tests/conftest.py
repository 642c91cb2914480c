"""Shared fixtures: every op test runs on each device (cpu, emu, cuda).

``cuda`` skips cleanly where no GPU is usable. The emulator runs in its checked mode
(``DLCORE_EMU_CHECK=1``: out-of-bounds and barrier checks) throughout the suite.
"""

from __future__ import annotations

import os

os.environ["DLCORE_EMU_CHECK"] = "1"  # before dlcore builds any emulator runner

import pytest  # noqa: E402

from dlcore.device import device_count  # noqa: E402

DEVICES = ("cpu", "emu", "cuda")


def skip_unless_available(device: str) -> None:
    """Skip the calling test when ``device`` cannot run here (``cuda`` without a GPU)."""
    if device.startswith("cuda") and device_count() == 0:
        pytest.skip("no CUDA device")


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Device name for a test: parametrised over cpu, emu and cuda (skipped without GPU)."""
    skip_unless_available(request.param)
    return request.param
