"""Faults of the process and its database, tried the way a fault probe found them: Ctrl-C while
a tool works then end of input, a database that cannot be written, a damaged database, and two
processes on one database (`assistant chat` on a pipe, `assistant doctor`)."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from adapters.telegram.store import open_store
from assistant.memory import MIGRATIONS, Memory
from tests.conftest import ROOT
from tests.fake_bot_api import FakeBotAPI
from tests.fake_ollama import answer, slow
from tests.test_memory import database_of_version
from tests.test_repl import asking, chat


def doctor(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistant", "doctor"], text=True, capture_output=True,
                          cwd=ROOT, env=env or dict(os.environ), timeout=300)


def database_lines(report: str) -> str:
    lines = report.splitlines()
    at = next(i for i, line in enumerate(lines) if "] Database:" in line)
    return "\n".join(lines[at:at + 2])


# -- Ctrl-C while a tool works, then end of input ------------------------------------------------

def test_ctrl_c_while_a_tool_works_then_end_of_input_ends_cleanly(models_env, media: Path,
                                                                  tmp_path: Path) -> None:
    video = media / "video" / "car_traffic_small.mp4"
    process = subprocess.Popen([sys.executable, "-m", "assistant", "chat", "--no-llm"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=dict(os.environ))
    try:
        assert process.stdin is not None
        process.stdin.write(f"/attach {video}\nwhat?\n")
        process.stdin.flush()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:  # the video tool is at work
            if any(name.endswith(".partial.mp4") for _, _, names in os.walk(tmp_path / "outputs")
                   for name in names):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the video tool never started")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate("", timeout=240)  # then end of input
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode in (0, 130), err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err
    memory = Memory(tmp_path / "test.sqlite3")
    assert memory.open_conversations("") == []  # the turn is closed...
    (stored,) = memory.turns("terminal")
    assert "cancelled" in str(stored.messages[-1].content)  # ...as cancelled


# -- a database that cannot be written -----------------------------------------------------------

def test_a_full_disk_fails_politely_and_the_rest_of_the_input_goes_on(models_env, media: Path,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "test.sqlite3"
    Memory(path).close()
    # Another process has the database open (so its shared-memory index is there already), and
    # this one may not write a byte past 4 KiB into any file: its first write to the database
    # fails as on a full disk (root is not stopped by file modes; this limit holds for root too).
    other = sqlite3.connect(path)
    other.execute("SELECT COUNT(*) FROM turns").fetchone()

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    photo = media / "images" / "inet_zebra.jpg"
    result = subprocess.run([sys.executable, "-m", "assistant", "chat", "--no-llm"], text=True,
                            input=f"/attach {photo}\nhello\n/help\n", capture_output=True, cwd=ROOT,
                            env=dict(os.environ), timeout=300, preexec_fn=full_disk)
    other.close()

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "cannot rollback" not in result.stderr
    assert f"error: The conversation database {path} cannot be written" in result.stderr  # /attach
    assert "free some disk space" in result.stderr
    # hello: the person is told; the log (on standard error here) names the file, says what to do
    assert "Something went wrong while answering: the conversation database cannot be written" in result.stdout
    assert f"turn failed: The conversation database {path} cannot be written" in result.stderr
    assert "/reset" in result.stdout  # /help: the rest of the input was read


# -- a damaged database --------------------------------------------------------------------------

def stored_conversation(path: Path, turns: int = 60) -> None:
    memory = Memory(path)
    for i in range(turns):
        messages = [HumanMessage(content=f"message {i:03} " + "x" * 200), AIMessage(content="answer")]
        memory.finish_turn("terminal", memory.begin_turn("terminal", messages[:1]), messages)
    memory.close()


def overwrite(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def damage_page(path: Path) -> None:
    """The header of a page holding stored turns, overwritten."""
    stored_conversation(path)
    page_size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    at = path.read_bytes().index(b"message 030")
    overwrite(path, at // page_size * page_size, b"\xff" * 16)


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 1000)


@pytest.mark.parametrize("damage", [damage_page, not_sqlite], ids=["page of turns", "not SQLite"])
def test_a_damaged_database_is_named_at_start_and_by_doctor(models_env, tmp_path: Path, damage) -> None:
    path = tmp_path / "test.sqlite3"
    damage(path)

    result = chat(["hello", "/help"], "--no-llm", timeout=120)  # it used to wait forever
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"The conversation database {path} is damaged" in result.stderr
    assert f"mv '{path}' '{path}.damaged'" in result.stderr  # what to do
    assert "Traceback" not in result.stderr

    report = doctor()
    assert report.returncode == 1
    assert f"[fail] Database: {path} is damaged" in database_lines(report.stdout)
    assert f"mv '{path}' '{path}.damaged'" in database_lines(report.stdout)


def test_a_damaged_turn_is_left_out_and_named_not_every_turn_failing(models_env, tmp_path: Path) -> None:
    path = tmp_path / "test.sqlite3"
    stored_conversation(path)
    overwrite(path, path.read_bytes().index(b"message 030") - 14, b"\xff" * 4)  # inside its JSON

    result = chat(["hello", "hello again"], "--no-llm", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "internal error" not in result.stdout and "Something went wrong" not in result.stdout
    assert result.stdout.count("I can only analyse attachments") == 2
    assert f"The conversation database {path} is damaged: stored turn 31 cannot be read" in result.stderr
    assert len(Memory(path).turns("terminal")) == 62  # the others, and the new ones, are kept

    report = doctor()
    assert report.returncode == 1
    assert "is damaged (malformed records: 1 stored turn(s) cannot be read: 31)" in database_lines(report.stdout)


@pytest.mark.timeout(120)
def test_the_start_thread_never_leaves_the_repl_waiting(models_env) -> None:
    """Whatever fails while the agent is built or prepared, whoever waits for it is let go."""
    from adapters.repl import AgentStarter, AgentUnavailable
    from assistant.config import Settings

    def broken(agent: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    starter = AgentStarter(Settings.read()[0], use_llm=False)
    starter.on_built.append(broken)
    starter.start()
    with pytest.raises(AgentUnavailable, match="malformed"):
        starter.agent()  # it used to wait forever
    starter.wait_warm()


def test_doctor_checks_a_sound_database(models_env, tmp_path: Path) -> None:
    stored_conversation(tmp_path / "test.sqlite3", turns=3)
    assert database_lines(doctor().stdout).startswith("[ok] Database:")


# -- two processes on one database ----------------------------------------------------------------

def test_a_turn_another_process_is_answering_is_not_interrupted(models_env, fake_ollama) -> None:
    fake_ollama.script.append(slow(60, answer("This answer comes later.")))
    first = asking(fake_ollama, "Tell me a long story.", "--conversation", "k")
    try:
        # A second process starts on the same database, and even answers in the conversation.
        second = chat(["hello"], "--no-llm", "--conversation", "k")
        assert second.returncode == 0, second.stderr[-2000:]
        assert "interrupted" not in second.stderr + second.stdout
        first.kill()  # now its process is gone
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()

    third = chat(["hello"], "--no-llm", "--conversation", "k")
    assert 'Your previous message ("Tell me a long story.") was interrupted' in third.stderr


def test_an_open_turn_of_a_database_from_before_owners_is_interrupted_after_the_upgrade(tmp_path: Path) -> None:
    old = database_of_version(tmp_path / "v5.sqlite3", 5)  # the schema before turns had owners
    message = '[{"type": "human", "data": {"content": "%s", "type": "human"}}]'
    old.execute("INSERT INTO turns (conversation_id, messages, created, state) VALUES ('a', ?, 0, 'done')",
                (message % "kept",))
    old.execute("INSERT INTO turns (conversation_id, messages, created, state) VALUES ('a', ?, 0, 'open')",
                (message % "left open",))
    old.close()

    memory = Memory(tmp_path / "v5.sqlite3")
    assert memory.recover_interrupted("a") == ["left open"]
    assert [t.messages[0].content for t in memory.turns("a")] == ["kept", "left open"]
    assert sqlite3.connect(tmp_path / "v5.sqlite3").execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


# -- the Telegram bot's tables on a full disk ----------------------------------------------------

@pytest.mark.parametrize("store_made", [True, False], ids=["store up to date", "store to be made"])
def test_the_telegram_bot_on_a_full_disk(models_env, fake_ollama, tmp_path: Path, store_made: bool) -> None:
    """An up-to-date store is only read, so the bot starts and serves; a store that must still
    be made cannot be, and the bot says so in one sentence and exits 2 (it used to rewrite its
    schema version at every start, and show a traceback)."""
    path = tmp_path / "test.sqlite3"
    Memory(path).close()
    if store_made:
        open_store(path).close()
    other = sqlite3.connect(path)  # as in the full-disk test above: the first write fails
    other.execute("SELECT COUNT(*) FROM turns").fetchone()

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with FakeBotAPI() as api:
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": api.token, "TELEGRAM_API_BASE_URL": api.url,
               "ASSISTANT_TELEGRAM_ALLOWED_USERS": "1001", "OLLAMA_HOST": fake_ollama.url}
        process = subprocess.Popen([sys.executable, "-m", "assistant", "telegram"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, preexec_fn=full_disk)
        try:
            deadline = time.monotonic() + 120
            while (time.monotonic() < deadline and process.poll() is None
                   and not any(call.method == "getUpdates" for call in api.calls)):
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
            other.close()

    assert "Traceback" not in err
    if store_made:
        assert process.returncode == 0, err[-2000:]
        assert "Serving as" in err
    else:
        assert process.returncode == 2, err[-2000:]
        (line,) = err.strip().splitlines()  # one sentence: which file, what, what to do
        assert line.startswith(f"assistant telegram: The conversation database {path} cannot be written (")
        assert line.endswith("free some disk space, or make it writable, or set ASSISTANT_DB to a writable place.")
