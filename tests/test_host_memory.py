"""dlcore.host_memory: glibc's malloc thresholds set at import, the user's choice winning, and
release(). Each case runs in a fresh interpreter: the settings are process-wide, and whether
freed memory comes back without page faults is what they change, so that is what is counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

try:
    GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
except (AttributeError, ValueError, OSError):
    GLIBC = False

# 24 arrays of 8 MiB, written, all freed, and again: the page faults of the second round (the
# first one's memory reused, or fresh pages), then of a third one after dlcore.host_memory.
# release() when RELEASE is set. 8 MiB is under dlcore's mmap threshold and over glibc's
# adaptive one at first.
PROBE = """
import json, os, resource
import numpy as np
import dlcore

def fill():
    arrays = [np.ones(2**21, np.float32) for _ in range(24)]
    del arrays

def faults(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

fill()
out = {"again": faults(fill), "settings": dlcore.host_memory.settings()}
if os.environ.get("RELEASE"):
    out["released"] = dlcore.host_memory.release()
    out["after_release"] = faults(fill)
print(json.dumps(out))
"""
# the 4 KiB pages of one round; a kernel that maps anonymous memory in larger folios (Linux
# 6.x multi-size THP: 16 KiB here) takes one fault per folio, hence the loose bounds below
PAGES = 24 * 8 * 2**20 // 4096


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "DLCORE_HOST_MALLOC")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


pytestmark = pytest.mark.skipif(not GLIBC, reason="mallopt and malloc_trim are glibc's")


def test_freed_arrays_come_back_without_page_faults() -> None:
    """With dlcore's thresholds the second round reuses the first one's pages (almost no
    faults); with glibc's adaptive defaults (the opt-out) it faults most pages in again."""
    got = _probe()
    assert got["settings"]["applied"] is True
    assert got["settings"]["mmap_threshold"] == 32 * 2**20
    assert got["settings"]["trim_threshold"] == 2**30
    assert got["again"] < PAGES // 100, got
    system = _probe(DLCORE_HOST_MALLOC="system")
    assert system["settings"] == {"applied": False,
                                  "reason": "the user's choice: DLCORE_HOST_MALLOC=system"}
    assert system["again"] > PAGES // 16, system


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                  "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"])
def test_the_users_malloc_environment_wins(name: str) -> None:
    """Any of glibc's own malloc variables in the environment: dlcore sets nothing and says
    whose choice it was."""
    value = "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES" else "131072"
    got = _probe(**{name: value})
    assert got["settings"] == {"applied": False, "reason": f"the user's choice: {name}={value}"}


def test_release_hands_the_memory_back() -> None:
    """release() trims the heap: the round after it faults its pages in again."""
    got = _probe(RELEASE="1")
    assert got["again"] < PAGES // 100, got
    assert got["released"] is True
    assert got["after_release"] > PAGES // 16, got


def test_info_names_the_setting() -> None:
    """`dlcore info` has the host_malloc line, and the JSON report its key."""
    from dlcore import host_memory, sysinfo
    from dlcore.cli.info import format_report
    report = sysinfo.collect()
    assert report["host_malloc"] == host_memory.describe()
    assert f"host_malloc  {host_memory.describe()}" in format_report(report).splitlines()
