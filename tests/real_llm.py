"""The real-LLM tier: one ``../shared/llm/mini_ollama.py`` server for the whole test session,
serving real small instruct models over Ollama's HTTP API (greedy, on a free port): Qwen and
SmolLM2 with their own templates, and Qwen's weights as ``llama3.1:8b`` rendered with Ollama's
llama3.1 template (the product's default model's prompt layout: tools in the last user message);
and one llama-cpp-python OpenAI-compatible server (``python -m llama_cpp.server``, its ``server``
extra) serving the Qwen model over the OpenAI chat API (seeded, on a free port).

Under ``CI=true`` a server that cannot start fails the run; elsewhere those tests skip with the
reason. ``ASSISTANT_TEST_LLM_PYTHON`` is the python with llama-cpp-python and jinja2 (default:
this one), ``ASSISTANT_TEST_LLM_DIR`` where ``fetch-models`` put the GGUFs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

QWEN, SMOLLM, LLAMA31 = "qwen2.5-coder:0.5b", "smollm2:135m", "llama3.1:8b"
_FILES = {QWEN: "qwen2.5-coder-0.5b-instruct.gguf:tools", SMOLLM: "smollm2-135m-instruct.gguf",
          LLAMA31: "qwen2.5-coder-0.5b-instruct.gguf:tools"}
#: Models rendered with one of mini_ollama's built-in Ollama templates instead of their GGUF's.
_TEMPLATES = {LLAMA31: "llama3.1"}


@dataclass
class RealOllama:
    url: str
    log: Path

    def entries(self, model: str, start: int = 0) -> list[dict]:
        """The server's log lines of ``model``'s chat requests (from line ``start`` on)."""
        lines = self.log.read_text(encoding="utf-8").splitlines()[start:] if self.log.exists() else []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if e.get("path") == "/api/chat" and e.get("body", {}).get("model") == model
                and e.get("prompt_tokens") is not None]

    @property
    def env(self) -> dict[str, str]:
        """What points the assistant at it."""
        return {"ASSISTANT_LLM_API": "ollama", "OLLAMA_HOST": self.url}


@dataclass
class RealOpenAI:
    url: str  # the API's base URL, ending in /v1

    @property
    def env(self) -> dict[str, str]:
        return {"ASSISTANT_LLM_API": "openai", "ASSISTANT_LLM_BASE_URL": self.url}


def turn_of(entry: dict) -> str:
    """Which turn a logged request belongs to: the first user message after the last answer
    (an assistant message without tool calls): the turn's own message; what follows it are
    tool calls, results and instructions."""
    messages = entry["body"]["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant" and not m.get("tool_calls")),
               default=-1)
    return next((str(m.get("content")) for m in messages[last + 1:] if m.get("role") == "user"), "")


def new_tokens_per_turn(entries: list[dict]) -> list[tuple[str, int]]:
    """(the turn's message, prompt tokens evaluated anew over its requests), in order: what
    the server read beyond the prefix it kept from the request before (Ollama's prompt cache)."""
    turns: list[tuple[str, int]] = []
    for entry in entries:
        new = entry["prompt_tokens"] - entry["reused_prefix_tokens"]
        key = turn_of(entry)
        if turns and turns[-1][0] == key:
            turns[-1] = (key, turns[-1][1] + new)
        elif key:
            turns.append((key, new))
    return turns


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real-LLM tier: {reason}", pytrace=False)
    pytest.skip(f"real-LLM tier: {reason}")


def start_server(python: str, server: Path, models: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """mini_ollama with every model on a free port, greedy, logging to ``log``; waits until
    it answers. Raises RuntimeError with its error output when it does not start."""
    port = _free_port()
    command = [python, str(server), "--port", str(port), "--greedy", "--log", str(log)]
    for name, file in _FILES.items():
        command += ["--model", f"{name}={models / file}"]
    for name, template in _TEMPLATES.items():
        command += ["--template", f"{name}={template}"]
    return _started(command, f"http://127.0.0.1:{port}", "/api/version", log.with_suffix(".stderr"))


def start_openai_server(python: str, models: Path, errors: Path, n_ctx: int = 4096) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server with the Qwen model (named as mini_ollama
    names it) on a free port, seeded; waits until it answers; returns it and its base URL.
    Raises RuntimeError with its error output when it does not start."""
    port = _free_port()
    command = [python, "-m", "llama_cpp.server", "--model", str(models / _FILES[QWEN].split(":")[0]),
               "--model_alias", QWEN, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
               "--seed", "1", "--verbose", "False"]
    return _started(command, f"http://127.0.0.1:{port}/v1", "/models", errors)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _started(command: list[str], url: str, probe: str, errors: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors.open("w"))
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + probe, timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the server did not start: {errors.read_text()[-800:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOllama]:
    from tests.conftest import _shared

    server = _shared() / "llm" / "mini_ollama.py"
    models = Path(os.environ.get("ASSISTANT_TEST_LLM_DIR", Path.home() / ".cache" / "assistant-test-llm"))
    python = os.environ.get("ASSISTANT_TEST_LLM_PYTHON", sys.executable)
    if not server.exists():
        _unavailable(f"{server} not found")
    missing = sorted({name.split(":")[0] for name in _FILES.values() if not (models / name.split(":")[0]).exists()})
    if missing:
        _unavailable(f"{', '.join(missing)} not in {models} (run ../shared/llm/fetch-models {models})")
    check = subprocess.run([python, "-c", "import llama_cpp, jinja2"], capture_output=True, text=True)
    if check.returncode != 0:
        _unavailable(f"{python} lacks llama-cpp-python or jinja2 (pip install '.[llm-test]')")
    log = tmp_path_factory.mktemp("llm") / "requests.jsonl"
    try:
        process, url = start_server(python, server, models, log)
    except RuntimeError as exc:
        _unavailable(str(exc))
    try:
        yield RealOllama(url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def real_openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOpenAI]:
    """The Qwen model behind llama-cpp-python's OpenAI-compatible server, for the whole session."""
    models = Path(os.environ.get("ASSISTANT_TEST_LLM_DIR", Path.home() / ".cache" / "assistant-test-llm"))
    python = os.environ.get("ASSISTANT_TEST_LLM_PYTHON", sys.executable)
    file = _FILES[QWEN].split(":")[0]
    if not (models / file).exists():
        _unavailable(f"{file} not in {models} (run ../shared/llm/fetch-models {models})")
    check = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if check.returncode != 0:
        _unavailable(f"{python} lacks llama-cpp-python's server (pip install '.[llm-test]'): "
                     f"{check.stderr.strip().splitlines()[-1:]}")
    errors = tmp_path_factory.mktemp("openai") / "server.stderr"
    try:
        process, url = start_openai_server(python, models, errors)
    except RuntimeError as exc:
        _unavailable(str(exc))
    try:
        yield RealOpenAI(url)
    finally:
        process.terminate()
        process.wait(timeout=30)
