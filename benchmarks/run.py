"""Run every benchmark script in its own process (so peak memory is per tool) and print
one table. Usage: ``python benchmarks/run.py [NAME ...]`` (e.g. ``image audio``). The long
session (``soak``, many minutes) runs only when named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONLY_WHEN_NAMED = {"soak"}


def main(names: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    wanted = set(names) or {s.stem.removeprefix("bench_") for s in scripts} - ONLY_WHEN_NAMED
    scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            print("   " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        if proc.returncode:
            failed += 1
            print(f"   failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
