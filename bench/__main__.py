"""``python -m bench [SUITE ...] [--device D] [--json FILE] [--quick]``: run benchmark suites,
print a table, optionally write JSON with the machine and versions."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
from typing import Any

SUITES = ("overhead", "launch", "optim", "conv", "pool", "rnn")


def _environment(device: str) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    import dlcore  # noqa: PLC0415

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device, "machine": platform.machine(), "processor": platform.processor(),
           "python": platform.python_version(), "dlcore": dlcore.__version__,
           "numpy": np.__version__}
    try:
        import torch  # noqa: PLC0415

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


def _format(rows: list[dict]) -> str:
    cols = ["suite", "case", "device", "median_us", "us_per_op", "us_per_step", "gflop_s",
            "gflops", "gbps", "peak_mb", "numpy_floor_us", "reference_us", "ratio", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    table = [cols] + [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("suites", nargs="*", default=list(SUITES), help=f"of {', '.join(SUITES)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    for name in args.suites:
        if name not in SUITES:
            ap.error(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ImportError as exc:
            print(f"suite {name}: unavailable ({exc})", file=sys.stderr)
            continue
        rows += mod.run(args.device, quick=args.quick)
    print(_format(rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"environment": _environment(args.device), "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
