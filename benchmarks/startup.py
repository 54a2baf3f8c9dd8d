"""Start-up cost: CPU-seconds to import what ``infer.py`` needs, against importing torch alone.

    nice -n 10 python benchmarks/startup.py --repeats 5

Each measurement is a fresh interpreter (``python -c "import ..."``); its user+system CPU time is
read from ``resource.getrusage(RUSAGE_CHILDREN)``. The rows run interleaved (round-robin), so a busy
machine slows them alike. Printed JSON: per row the median, min and max CPU-s and wall-s, and the
ratio of each row's median CPU-s to ``torch``'s. The ``+ torchvision`` row is what the import cost
while ``import ffsplat`` imported torchvision (and ``torch._dynamo`` with it) eagerly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROWS = {
    "torch": "import torch",
    "ffsplat": "import ffsplat",
    "infer (ffsplat.inference.cli)": "import ffsplat.inference.cli",
    "infer + torchvision (the old eager shim)": "import ffsplat.inference.cli, torchvision",
}


def measure(code: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per row (default 5)")
    args = parser.parse_args(argv)
    for code in ROWS.values():  # warm the file cache once per row; not counted
        measure(code)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ROWS}
    for _ in range(args.repeats):
        for name, code in ROWS.items():
            runs[name].append(measure(code))
    base = statistics.median(cpu for cpu, _ in runs["torch"])
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "repeats": args.repeats,
        "rows": {},
    }
    for name, values in runs.items():
        cpu = [c for c, _ in values]
        wall = [w for _, w in values]
        report["rows"][name] = {
            "cpu_s_median": round(statistics.median(cpu), 3),
            "cpu_s_min": round(min(cpu), 3),
            "cpu_s_max": round(max(cpu), 3),
            "wall_s_median": round(statistics.median(wall), 3),
            "ratio_to_torch": round(statistics.median(cpu) / base, 2),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
