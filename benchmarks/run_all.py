"""Run every benchmark, each in its own process with its own control plane, and print a summary.

    .venv/bin/python benchmarks/run_all.py [--only form,spawn,memory,page]

Each benchmark prints its own details as it goes; the table at the end collects the headline
rows (candidate = AICoESpawner, reference = plain KubeSpawner, ratio = candidate/reference).
Over-goal results are reported, not failed: the exit status is non-zero only if a benchmark
could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, print_table, say

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "form": "bench_form_render.py",
    "spawn": "bench_spawn.py",
    "memory": "bench_memory.py",
    "page": "bench_page.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated: form,spawn,memory,page"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with tempfile.TemporaryDirectory(prefix="aicoe-bench-") as tmp:
        for name in chosen:
            out = Path(tmp) / f"{name}.json"
            t0 = time.monotonic()
            result = subprocess.run(
                [sys.executable, str(HERE / BENCHMARKS[name]), "--json-out", str(out)],
                check=False,
            )
            say(f"-- {name}: {time.monotonic() - t0:.0f} s wall, exit {result.returncode}")
            say()
            if result.returncode != 0 or not out.exists():
                failed.append(name)
                continue
            rows += [Row(**row) for row in json.loads(out.read_text())]

    say(f"== Summary ({stamp}; {time.monotonic() - started:.0f} s) ==")
    say("candidate = AICoESpawner, reference = plain KubeSpawner; ratio = candidate/reference")
    say()
    print_table(rows)
    if failed:
        say()
        say(f"benchmarks that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
