"""Errors of the kernel toolchain, shared by the CuPy loader, the NVRTC check and the emulator."""

from __future__ import annotations

import re

_NVRTC_ERROR = re.compile(
    r"^(?P<file>[^\s(]+)\((?P<line>\d+)\): (?:catastrophic )?(?:error|warning)", re.M)


class KernelCompileError(RuntimeError):
    """A kernel source failed to compile: names the file, the first error line, and carries
    the full compiler log, so the message alone is enough to find the fault."""

    def __init__(self, filename: str, line: int | None, log: str, compiler: str = "NVRTC") -> None:
        self.filename, self.line, self.log, self.compiler = filename, line, log, compiler
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{compiler} failed to compile {where}\n{log.rstrip()}")

    @classmethod
    def from_nvrtc_log(cls, filename: str, log: str) -> KernelCompileError:
        """Build from an NVRTC log (``file.cu(12): error ...``), locating the first error or
        warning."""
        m = _NVRTC_ERROR.search(log)
        if m:
            return cls(m.group("file"), int(m.group("line")), log)
        return cls(filename, None, log)
