"""A long session: memory and open file descriptors of one `assistant chat --json` process
over many mixed turns (should stay flat after warm-up).

One REPL process on a pipe is driven through text turns (some with a sentiment tool call),
photos, audio clips, a short video now and then and a `/reset` or two, with the scripted fake
Ollama (``tests/fake_ollama.py``) and a models directory (random-weight stand-ins plus the real
YAMNet and Whisper, ``tests/model_builders.py``). Every 10 turns the process's resident memory
(``/proc/PID/status`` VmRSS) and open descriptors (``/proc/PID/fd``) are sampled and printed as
one JSON line; the last line has RSS at turns 100/200/300, the descriptors' range and the RSS
slope after warm-up (least squares over the samples from turn 100 on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import MEDIA, ROOT, SHARED, emit, scratch_dir

from tests.fake_ollama import FakeOllama, Scripted, answer, tool_call
from tests.model_builders import build_models_dir

PHOTOS = ["ext_tabby_cat.jpg", "ext_grace_hopper.jpg", "inet_goldfish.jpg", "inet_zebra.jpg"]
CLIPS = ["us8k_dog_bark_100032-3-0-0.wav", "librosa_bird_robin.ogg", "siren.m4a", "bird_robin.mp3"]
VIDEO = "car_traffic_small.mp4"
WARM_UP_TURNS = 100


class ChattyOllama(FakeOllama):
    """The scripted fake Ollama that answers in plain words whenever nothing is scripted."""

    def next_reply(self) -> Scripted:
        with self._lock:
            return self.script.pop(0) if self.script else answer("Here is what I found, briefly.")


def plan(turn: int, turns: int) -> tuple[list[str], bool]:
    """Lines to send for ``turn`` (1-based) and whether a reply line comes back."""
    if turn in (turns // 3, 2 * turns // 3):
        return ["/reset"], False
    if turn % 40 == 0:
        return [f"/attach {MEDIA / 'video' / VIDEO}", "what happens in this video?"], True
    kind = turn % 4
    if kind == 1:
        return [f"/attach {MEDIA / 'images' / PHOTOS[turn // 4 % len(PHOTOS)]}", "what is this?"], True
    if kind == 3:
        return [f"/attach {MEDIA / 'audio' / CLIPS[turn // 4 % len(CLIPS)]}", "what do you hear?"], True
    return [f"message {turn}: how does this sound to you, is it a good day?"], True


def sample(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (turn, value) points, per 100 turns."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 100 * sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="turns to drive (default 300)")
    parser.add_argument("--models-dir", type=Path, help="a models directory (default: built here)")
    args = parser.parse_args()

    work = scratch_dir("soak")
    models = args.models_dir or build_models_dir(work / "models", SHARED / "models")
    ollama = ChattyOllama().start()
    env = {name: value for name, value in os.environ.items() if not name.startswith("ASSISTANT_")}
    env.update(ASSISTANT_MODELS_DIR=str(models), ASSISTANT_DB=str(work / "soak.sqlite3"),
               ASSISTANT_CACHE_DIR=str(work / "cache"), ASSISTANT_DEVICE="cpu",
               ASSISTANT_VIDEO_MAX_FRAMES="3", OLLAMA_HOST=ollama.url, HOME=str(work))
    with open(work / "stderr.log", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "assistant", "chat", "--json", "--conversation", "soak"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, cwd=ROOT, env=env)
    assert process.stdin is not None and process.stdout is not None
    rss: list[tuple[int, float]] = []
    fds: list[int] = []
    start = time.perf_counter()
    done = 0
    try:
        for turn in range(1, args.turns + 1):
            lines, replies = plan(turn, args.turns)
            if lines[-1].startswith("message") and turn % 8 == 2:
                ollama.script += [tool_call("sentiment", text=lines[-1]), answer("It sounds positive.")]
            ollama.requests.clear()  # what the fake server records is not this benchmark's concern
            process.stdin.write("".join(line + "\n" for line in lines))
            process.stdin.flush()
            if replies:
                reply = process.stdout.readline()
                if not reply:
                    break
                json.loads(reply)
            done = turn
            if turn % 10 == 0:
                memory, descriptors = sample(process.pid)
                rss.append((turn, memory))
                fds.append(descriptors)
                emit("soak", turn=turn, rss_mb=round(memory, 1), fds=descriptors,
                     seconds=round(time.perf_counter() - start, 1))
    finally:
        process.stdin.close()
        code = process.wait(timeout=120)
        ollama.stop()
    after = [(turn, value) for turn, value in rss if turn >= WARM_UP_TURNS]
    at = {str(turn): round(value, 1) for turn, value in rss if turn in (100, 200, 300)}
    emit("soak", turns_done=done, exit_code=code, rss_mb_at=at,
         fd_min=min(fds, default=0), fd_max=max(fds, default=0),
         rss_slope_mb_per_100_turns=round(slope(after), 1),
         minutes=round((time.perf_counter() - start) / 60, 1), stderr_log=str(work / "stderr.log"))


if __name__ == "__main__":
    main()
