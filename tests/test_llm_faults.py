"""Language-model faults, as the fault probe found them (issues 18 and 19), for both servers:
a reply that streams forever is cut off with a note and the next message is answered; a
proxy's HTML error page is one sentence; a malformed OLLAMA_HOST is a bad setting, never a
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.agent import Agent
from assistant.config import Settings
from assistant.llm.base import make_llm
from assistant.memory import Memory
from assistant.turns import Turn
from tests import fake_ollama, fake_openai
from tests.conftest import ROOT
from tests.scripted_llm import fake_tools

#: A proxy's page in front of the server (nginx's words).
BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
               "</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n")


@pytest.fixture(params=["ollama", "openai"])
def server(request: pytest.FixtureRequest):
    """Either scripted server, with what points the assistant at it."""
    if request.param == "ollama":
        fake = fake_ollama.FakeOllama().start()
        fake.env = {"ASSISTANT_LLM_API": "ollama", "OLLAMA_HOST": fake.url}
    else:
        fake = fake_openai.FakeOpenAI().start()
        fake.env = {"ASSISTANT_LLM_API": "openai", "ASSISTANT_LLM_BASE_URL": fake.url}
    fake.kind = request.param
    yield fake
    fake.stop()


def scripted(server, name: str, *args, **kwargs):
    return getattr(fake_ollama if server.kind == "ollama" else fake_openai, name)(*args, **kwargs)


def agent_for(server, tmp_path: Path, **env: str) -> Agent:
    settings = Settings.from_env({**server.env, "ASSISTANT_DB": str(tmp_path / "memory.sqlite3"), **env})
    return Agent(fake_tools(), Memory(settings.db_path), make_llm(settings), output_root=tmp_path / "outputs")


def test_an_endless_reply_is_cut_off_with_a_note_and_the_next_message_is_answered(server, tmp_path: Path) -> None:
    """`assistant chat` on a pipe: words every 0.1 s forever, a 2 s bound on a reply."""
    server.script += [scripted(server, "endless", 0.1), scripted(server, "answer", "Hello again.")]
    env = {**os.environ, **server.env, "ASSISTANT_DB": str(tmp_path / "db.sqlite3"), "ASSISTANT_LLM_TIMEOUT": "5",
           "ASSISTANT_LLM_MAX_REPLY_SECONDS": "2"}

    result = subprocess.run([sys.executable, "-m", "assistant", "chat", "--json"], cwd=ROOT, env=env,
                            input="tell me everything\nhello?\n", text=True, capture_output=True, timeout=300)

    assert result.returncode == 0, result.stderr[-2000:]
    first, second = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert first["text"].startswith("word word") and "The language model stopped answering" in first["text"]
    assert first["notes"] == ["The reply was cut off after 2 s (ASSISTANT_LLM_MAX_REPLY_SECONDS)."]
    assert second["text"] == "Hello again." and second["notes"] == []


def test_a_reply_is_bounded_in_tokens_too(server, tmp_path: Path) -> None:
    agent = agent_for(server, tmp_path, ASSISTANT_LLM_MAX_REPLY_TOKENS="20")
    server.script.append(scripted(server, "endless", 0.01))
    shown: list[str] = []

    reply = agent.respond(Turn("c", "hi"), on_token=shown.append)

    assert reply.notes == ["The reply was cut off after 20 tokens (ASSISTANT_LLM_MAX_REPLY_TOKENS)."]
    assert "".join(shown) == "word " * 20 and reply.text.startswith("word " * 19 + "word")


def test_an_html_error_page_from_a_proxy_is_one_sentence(server, tmp_path: Path, media: Path) -> None:
    agent = agent_for(server, tmp_path)
    if server.kind == "ollama":
        server.script.append(fake_ollama.failure(502, BAD_GATEWAY, html=True))
    else:
        server.script.append(fake_openai.failure(502, BAD_GATEWAY, content_type="text/html"))
    photo = agent.attachments("c").register(media / "images" / "ext_tabby_cat.jpg")

    reply = agent.respond(Turn("c", "what is it?", [photo]))

    who = "Ollama" if server.kind == "ollama" else "The language model server"
    assert reply.text.startswith(f"_{who} answered with an error (HTTP 502): 502 Bad Gateway")
    assert "<" not in reply.text and "nginx" not in reply.text
    assert any(line.startswith("image · tabby") for line in reply.results)


@pytest.mark.parametrize("command", [["doctor"], ["chat", "--no-llm"], ["analyze", "--text", "ok"]])
def test_a_malformed_ollama_host_is_a_bad_setting_not_a_traceback(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OLLAMA_HOST": "localhost:abc", "ASSISTANT_DB": str(tmp_path / "db.sqlite3")}

    result = subprocess.run([sys.executable, "-m", "assistant", *command], cwd=ROOT, env=env, input="",
                            text=True, capture_output=True, timeout=300)

    assert "Traceback" not in result.stderr
    assert "OLLAMA_HOST='localhost:abc'" in result.stdout + result.stderr
    assert result.returncode == (1 if command == ["doctor"] else 2)


def test_the_ollama_client_imports_under_a_malformed_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing ``ollama`` builds a client from OLLAMA_HOST; the module is imported without it."""
    from assistant.llm.ollama import import_ollama

    monkeypatch.delitem(sys.modules, "ollama", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "localhost:abc")

    assert import_ollama().Client is not None
    assert os.environ["OLLAMA_HOST"] == "localhost:abc"


@pytest.mark.parametrize(("body", "line"), [
    (BAD_GATEWAY, "502 Bad Gateway"),
    ("<!DOCTYPE html><body><h1>Service  Unavailable</h1><p>Back &amp; running soon</p></body>",
     "Service Unavailable Back & running soon"),
    ("model 'x' not found", "model 'x' not found"),
    ("overloaded " * 40, ("overloaded " * 40)[:199].rstrip() + "…"),
], ids=["title", "no-title", "plain", "long"])
def test_error_text_is_one_short_line_without_markup(body: str, line: str) -> None:
    from assistant.llm.base import error_text

    assert error_text(body) == line
