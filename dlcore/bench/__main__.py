"""``python -m dlcore.bench [SUITE ...] [--device D] [--json FILE] [--quick] [--compare torch]``:
the same runner as ``dlcore bench`` (see :mod:`dlcore.bench.runner`)."""

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
