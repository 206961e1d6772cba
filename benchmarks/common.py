"""Small helpers the benchmark scripts share: timing, memory, stand-in models, output."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ASSISTANT_SHARED_DIR", ROOT.parent / "shared")).resolve()
MEDIA = SHARED / "media"
CONFIGS = SHARED / "models" / "configs"
sys.path.insert(0, str(ROOT))


def median_ms(fn: Callable[[], object], repeat: int = 10, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` in milliseconds, after ``warmup`` untimed calls.

    ``clock=time.process_time`` measures this process's CPU time instead of wall time: with
    one thread, what the call would take on an idle machine, however busy this one is.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples.append((clock() - start) * 1000)
    return statistics.median(samples)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int = 30, rounds: int = 3,
                        warmup: int = 3) -> dict[str, float]:
    """Median wall time (ms) of each of ``fns``, measured in ``rounds`` alternating blocks of
    ``repeat // rounds`` calls, so a change of load on a shared machine falls on all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, repeat // rounds)):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def repeat_arg(doc: str | None, default: int) -> int:
    """The ``--repeat N`` option every benchmark script takes (timed runs per median)."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=default, help="timed runs per median")
    return parser.parse_args().repeat


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()``'s result and its wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scratch_dir(name: str) -> Path:
    """A temporary directory for stand-in models and outputs."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


def emit(tool: str, **numbers: object) -> None:
    """Print one JSON line of results (``benchmarks/run.py`` collects these)."""
    numbers["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps({"tool": tool, **{k: (round(v, 3) if isinstance(v, float) else v)
                                       for k, v in numbers.items()}}, ensure_ascii=False), flush=True)


def write_wav(path: Path, samples, rate: int) -> Path:
    """Mono float samples in [-1, 1] as a 16-bit WAV file."""
    import wave

    import numpy as np

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path
