"""Kernel tests run the emulator in checked mode, over several fiber-order seeds."""

from __future__ import annotations

import os

import pytest

from kernel_samples import SEEDS

# Checked mode for every emulated launch in this suite (bounds checks, guarded arguments).
os.environ["DLCORE_EMU_CHECK"] = "1"


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def emu_seed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the test once per fiber-order seed; the seed shows in the test id and in errors."""
    monkeypatch.setenv("DLCORE_EMU_SEED", str(request.param))
    return request.param

