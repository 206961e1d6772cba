"""Start-up time: `assistant chat` to its first prompt on a terminal (target ≤ 2 s), the same
when scripted (stdin a pipe, fed "/quit"), `assistant --help` (target ≤ 1 s), and a cold
`assistant analyze` of one item per tool, process start to result (audio target ≤ 2 s; real
YAMNet, random-weight stand-ins of the others built into a scratch models directory).

The terminal case runs the REPL in a pseudo-terminal and stops the clock when the prompt
("you›") appears. Medians of several runs, as JSON lines (see benchmarks/common.py).

    .venv/bin/python benchmarks/bench_startup.py [--repeat N]
"""

from __future__ import annotations

import os
import pty
import select
import statistics
import subprocess
import sys
import time

from common import MEDIA, ROOT, SHARED, emit, repeat_arg, scratch_dir

PROMPT = "you›".encode()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ASSISTANT_DB"] = str(scratch_dir("startup") / "db.sqlite3")
    env.setdefault("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing listens: warm-up fails fast
    env.pop("COLUMNS", None)
    env["TERM"] = "xterm"
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "assistant", *args]


def time_to_prompt(env: dict[str, str], timeout: float = 60.0) -> float:
    """Seconds from spawning `assistant chat` in a pseudo-terminal to its first prompt."""
    leader, follower = pty.openpty()
    start = time.perf_counter()
    process = subprocess.Popen(_command("chat"), stdin=follower, stdout=follower, stderr=follower,
                               cwd=ROOT, env=env, close_fds=True, start_new_session=True)
    os.close(follower)
    seen = b""
    try:
        while PROMPT not in seen:
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"no prompt within {timeout} s; output: {seen[-500:]!r}")
            ready, _, _ = select.select([leader], [], [], 0.05)
            if ready:
                chunk = os.read(leader, 4096)
                seen += chunk
                if b"\x1b[6n" in chunk:  # prompt_toolkit asks where the cursor is
                    os.write(leader, b"\x1b[1;1R")
        elapsed = time.perf_counter() - start
        os.write(leader, b"/quit\r")
        process.wait(timeout=30)
        return elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def time_run(args: list[str], env: dict[str, str], stdin: str = "") -> float:
    """Seconds for a whole command to run (to exit) with ``stdin`` piped in."""
    start = time.perf_counter()
    subprocess.run(_command(*args), input=stdin, text=True, cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    repeat = repeat_arg(__doc__, default=7)
    env = _env()
    time_to_prompt(env)  # warm the file cache
    emit("startup",
         chat_first_prompt_s=statistics.median(time_to_prompt(env) for _ in range(repeat)),
         chat_piped_quit_s=statistics.median(time_run(["chat"], env, "/quit\n") for _ in range(repeat)),
         help_s=statistics.median(time_run(["--help"], env) for _ in range(repeat)),
         runs=repeat)

    from tests.model_builders import build_models_dir

    env["ASSISTANT_MODELS_DIR"] = str(build_models_dir(scratch_dir("models"), SHARED / "models"))
    env["ASSISTANT_DEVICE"] = "cpu"
    items = {"audio": [str(MEDIA / "audio" / "us8k_siren_102853-8-0-0.wav")],
             "image": [str(MEDIA / "images" / "inet_pizza.jpg")],
             "sentiment": ["--text", "Этот проект отличный!"]}
    emit("startup", **{f"cold_analyze_{tool}_s": statistics.median(
        time_run(["analyze", *args], env) for _ in range(repeat)) for tool, args in items.items()},
         runs=repeat, load_avg=os.getloadavg()[0])


if __name__ == "__main__":
    main()
