"""The terminal REPL (`assistant chat`) driven as a subprocess: scripted through a pipe, and
once on a pseudo-terminal. Tools load from the ``models_env`` models directory; the language
model is the fake Ollama server, or switched off with --no-llm."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


from tests.conftest import ROOT
from tests.fake_ollama import FakeOllama, answer, slow, unused_url

HEAVY = ("torch", "tensorflow", "transformers", "cv2")


def chat(lines: list[str], *args: str, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `assistant chat` with ``lines`` on standard input (then end of input)."""
    return subprocess.run([sys.executable, "-m", "assistant", "chat", *args],
                          input="".join(f"{line}\n" for line in lines), text=True,
                          capture_output=True, cwd=ROOT, env=env or dict(os.environ),
                          timeout=timeout)


def llm_env(server: FakeOllama, **extra: str) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": server.url, **extra}


def sent_texts(server: FakeOllama) -> list[str]:
    """The message texts of the last chat request the model received."""
    return [str(message.get("content", "")) for message in server.chat_requests()[-1]["messages"]]


def asking(server: FakeOllama, line: str, *args: str, timeout: float = 240) -> subprocess.Popen[str]:
    """`assistant chat` (with ``args``) started with ``line`` sent, once the question has reached
    the model; the caller ends the process."""
    process = subprocess.Popen([sys.executable, "-m", "assistant", "chat", *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=llm_env(server))
    assert process.stdin is not None
    process.stdin.write(f"{line}\n")
    process.stdin.flush()
    deadline = time.monotonic() + timeout
    while not server.chat_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not server.chat_requests():
        process.kill()
        raise AssertionError("the question never reached the model")
    return process


def test_text_answer_streams_without_heavy_imports(models_env, fake_ollama) -> None:
    fake_ollama.script.append(answer("Hello! I can look at photos, audio and video for you."))
    result = chat(["Hi there"], env=llm_env(fake_ollama, PYTHONPROFILEIMPORTTIME="1"))

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello! I can look at photos, audio and video for you." in result.stdout
    assert "\x1b[" not in result.stdout  # plain text when not on a terminal
    assert "Hi there" in sent_texts(fake_ollama)
    assert "/help" in result.stderr  # the welcome line says how to get help
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "assistant.agent" in imported  # the profile covers the whole session
    assert not {name for name in imported if name.split(".")[0] in HEAVY}


def test_attach_photo_then_ask(models_env, media: Path, tmp_path: Path) -> None:
    (tmp_path / "pictures").symlink_to(media / "images", target_is_directory=True)
    result = chat(["/attach ~/pictures/inet_zebra.jpg", "What is in this photo?"], "--no-llm",
                  env={**os.environ, "HOME": str(tmp_path)})

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Attached att_1 (image, inet_zebra.jpg)" in result.stderr
    assert "att_1" in result.stdout and "image" in result.stdout
    assert re.search(r"\d+%", result.stdout)  # the classifier's scores
    assert "no-LLM mode" in result.stdout


def test_json_mode_gives_one_object_per_reply_with_the_result_lines(models_env, media: Path) -> None:
    import json

    result = chat([str(media / "images" / "inet_zebra.jpg"), "hello"], "--no-llm", "--json")

    assert result.returncode == 0, result.stderr[-2000:]
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["results"][0].startswith("image · ") and re.search(r"\d+%", first["results"][0])
    assert first["notes"] == ["no-LLM mode: tool results only"] and first["llm_used"] is False
    assert second["results"] == [] and "only analyse attachments" in second["text"]


def test_message_that_is_a_path_sends_the_file(models_env, media: Path) -> None:
    siren = media / "audio" / "us8k_siren_102853-8-0-0.wav"
    result = chat([f"'{siren}'"], "--no-llm")

    assert result.returncode == 0, result.stderr[-2000:]
    assert "att_1" in result.stdout
    assert "Siren" in result.stdout  # real YAMNet weights


def test_commands_and_errors_keep_the_session_going(models_env, models_dir: Path,
                                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    result = chat(["/tools", "/help", "/bogus", "/attach /nowhere/missing.jpg", "/nowhere/typed.jpg",
                   f"/attach {empty}",
                   "/attach 'unbalanced", "/attach", "/model", "/reset", "Hello?"], "--no-llm")

    assert result.returncode == 0, result.stderr[-2000:]
    out, err = result.stdout, result.stderr
    for name in ("sentiment", "audio", "image", "detect", "video"):
        assert re.search(rf"^{name}: .+\(model: {re.escape(str(models_dir))}", out, re.M), name
    assert "/attach PATH..." in out and "/quit" in out  # /help
    assert "Unknown command /bogus; /help lists the commands." in err
    assert "missing.jpg: no such file." in err
    assert "/nowhere/typed.jpg: no such file." in err  # a path, not an unknown command
    assert "empty.jpg: the file is empty." in err
    assert "quote paths that contain spaces" in err
    assert "Usage: /attach PATH..." in err
    assert "The language model is off (--no-llm)" in out
    assert "Conversation reset" in err
    assert "Traceback" not in err
    assert "no-LLM mode" in out  # the last message is still answered


def test_ollama_down_says_how_to_fix_it(models_env) -> None:
    result = chat(["Hello?", "/model"], env={**os.environ, "OLLAMA_HOST": unused_url()})

    assert result.returncode == 0, result.stderr[-2000:]
    assert "ollama serve" in result.stderr + result.stdout
    assert "not reachable" in result.stdout  # /model
    assert "Traceback" not in result.stderr


def test_model_lists_switches_and_is_kept(models_env, fake_ollama) -> None:
    fake_ollama.script += [answer('{"tool_calls": []}'), answer("Hello from llama3.")]
    first = chat(["/model", "/model nosuch", "/model llama3", "Hello"], env=llm_env(fake_ollama))

    assert first.returncode == 0, first.stderr[-2000:]
    out, err = first.stdout, first.stderr
    assert "Model: llama3.1:8b – available" in out and "Tool calling: native" in out
    assert "  llama3.1:8b (in use) – native tool calling" in out
    assert "  llama3:latest – no native tool calling" in out
    assert "There is no model 'nosuch' in Ollama" in err
    assert "This conversation now uses llama3:latest: no native tool calling" in err
    assert "Hello from llama3." in out
    assert {request["model"] for request in fake_ollama.chat_requests()} == {"llama3:latest"}

    second = chat(["/model"], env=llm_env(fake_ollama))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Model: llama3:latest – available" in second.stdout
    assert "  llama3:latest (in use) – no native tool calling" in second.stdout


def test_memory_persists_across_runs(models_env, fake_ollama) -> None:
    fake_ollama.script.append(answer("Nice to meet you, Ada."))
    first = chat(["My name is Ada."], "--conversation", "ada", env=llm_env(fake_ollama))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Nice to meet you, Ada." in first.stdout

    fake_ollama.script.append(answer("Your name is Ada."))
    second = chat(["What is my name?"], "--conversation", "ada", env=llm_env(fake_ollama))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Your name is Ada." in second.stdout
    remembered = sent_texts(fake_ollama)
    assert "My name is Ada." in remembered and "Nice to meet you, Ada." in remembered

    fake_ollama.script.append(answer("I do not know your name."))
    other = chat(["What is my name?"], "--conversation", "someone-else", env=llm_env(fake_ollama))
    assert other.returncode == 0
    assert "My name is Ada." not in sent_texts(fake_ollama)

    fake_ollama.script.append(answer("I do not know your name."))
    reset = chat(["/reset", "What is my name?"], "--conversation", "ada", env=llm_env(fake_ollama))
    assert reset.returncode == 0
    assert "My name is Ada." not in sent_texts(fake_ollama)


def test_ctrl_c_cancels_the_reply_not_the_program(models_env, fake_ollama) -> None:
    fake_ollama.script.append(slow(5, answer("This answer comes far too late.")))
    fake_ollama.script.append(answer("Still here."))
    process = asking(fake_ollama, "Tell me a long story.")
    try:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate("Are you there?\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-2000:]
    assert "cancelled" in err
    assert "Still here." in out
    assert "far too late" not in out


def test_terminal_session(models_env, tmp_path: Path) -> None:
    """On a terminal: the prompt, rendered replies, history in the user data dir, Ctrl-D."""
    env = {**os.environ, "TERM": "xterm", "XDG_DATA_HOME": str(tmp_path / "data"),
           "OLLAMA_HOST": unused_url()}
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "assistant", "chat", "--no-llm"],
                               stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env,
                               start_new_session=True)
    os.close(follower)
    screen = bytearray()

    def read_until(*texts: str, start: int = 0, timeout: float = 120) -> None:
        """Wait until ``texts`` appear in this order in what the terminal showed after ``start``."""
        pattern = re.compile(r"[\s\S]*?".join(re.escape(text) for text in texts))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen[start:].decode(errors="replace"))
            if pattern.search(shown):
                return
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    break
                screen.extend(chunk)
                if b"\x1b[6n" in chunk:  # prompt_toolkit asks for the cursor position
                    os.write(leader, b"\x1b[1;1R")
        raise AssertionError(f"{texts!r} not shown; screen: {bytes(screen[-1500:])!r}")

    def send(keys: bytes, *expected: str) -> None:
        start = len(screen)
        os.write(leader, keys)
        read_until(*expected, start=start)

    try:
        read_until("you›")
        send(b"/help\r", "Ctrl-C cancels", "you›")  # keys go only to a prompt that is shown
        send(b"/tools\r", "loads on first use", "you›")
        send(b"Hello?\r", "No language model in this session", "note: no-LLM mode", "you›")
        assert b"_No language model" not in screen  # Markdown is rendered, not shown raw
        os.write(leader, b"\x04")  # Ctrl-D
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    history = tmp_path / "data" / "local-assistant" / "repl_history"
    assert "/help" in history.read_text()


def test_long_messages_are_answered_not_crashed_on(models_env, tmp_path: Path) -> None:
    russian = "Расскажи, пожалуйста, подробно о том, что ты умеешь делать с фотографиями и видео. " * 2
    assert len(russian.encode()) > 255
    lines = ["b" * 256, russian, "x" * 5_000_000, "/attach " + "c" * 300, "/attach ~no-such-user/a.jpg",
             "next"]
    result = chat(lines, "--no-llm", "--conversation", "long")

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.count("I can only analyse attachments") == 4  # every message answered
    assert result.stderr.count("error:") == 2  # the two /attach lines: clear messages
    from assistant.memory import Memory

    stored = [turn.messages[0].content for turn in Memory(tmp_path / "test.sqlite3").turns("long")]
    assert stored == ["b" * 256, russian.strip(), "x" * 5_000_000, "next"]


def test_kill_9_mid_turn_keeps_the_tool_results_and_says_so(models_env, fake_ollama, media: Path,
                                                            tmp_path: Path) -> None:
    fake_ollama.script.append(slow(60, answer("This answer never arrives.")))
    siren = media / "audio" / "us8k_siren_102853-8-0-0.wav"
    process = subprocess.Popen([sys.executable, "-m", "assistant", "chat", "--conversation", "k"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT, env=llm_env(fake_ollama))
    try:
        assert process.stdin is not None
        process.stdin.write(f"/attach '{siren}'\nWhat is this sound?\n")
        process.stdin.flush()
        deadline = time.monotonic() + 240
        while not fake_ollama.chat_requests() and time.monotonic() < deadline:
            time.sleep(0.1)  # the tool result is stored before the model is asked
        assert fake_ollama.chat_requests(), "the turn never reached the model"
        process.kill()  # SIGKILL
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    fake_ollama.script.append(answer("It was a siren."))
    again = chat(["What did you hear before?"], "--conversation", "k", env=llm_env(fake_ollama))
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'Your previous message ("What is this sound?' in again.stderr
    sent = " ".join(sent_texts(fake_ollama))
    assert "Siren" in sent and "What is this sound?" in sent  # the interrupted turn's tool result
    assert "interrupted" in sent
    again2 = chat(["/quit"], "--conversation", "k", env=llm_env(fake_ollama))
    assert "interrupted" not in again2.stderr  # told once


def test_two_processes_on_one_database_lose_nothing(models_env, tmp_path: Path) -> None:
    processes = [subprocess.Popen([sys.executable, "-m", "assistant", "chat", "--no-llm", "--conversation", name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT, env=dict(os.environ))
                 for name in ("p1", "p2")]
    for name, process in zip(("p1", "p2"), processes):
        assert process.stdin is not None
        process.stdin.write("".join(f"{name} message {i}\n" for i in range(5)))
        process.stdin.flush()
    for process in processes:
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-2000:]
    from assistant.memory import Memory

    memory = Memory(tmp_path / "test.sqlite3")
    for name in ("p1", "p2"):
        assert [t.messages[0].content for t in memory.turns(name)] == [f"{name} message {i}" for i in range(5)]


def test_a_voice_note_is_answered_from_its_words(models_env, fake_ollama, media: Path) -> None:
    fake_ollama.script.append(answer("Это тестовое сообщение, всё понятно."))
    result = chat([str(media / "audio" / "voice_note_ru.oga")], env=llm_env(fake_ollama))

    assert result.returncode == 0, result.stderr[-2000:]
    user = [m for m in fake_ollama.chat_requests()[-1]["messages"] if m["role"] == "user"][-1]
    assert user["content"].startswith("Это тестовый текст на русском языке")  # as if typed
    assert "att_1 (voice note, voice_note_ru.oga)" in user["content"]
    lines = result.stdout.splitlines()
    assert "Это тестовое сообщение, всё понятно." in result.stdout
    heard = [line for line in lines if line.startswith("result: speech")]
    assert heard and "Это тестовый текст" in heard[0]
    assert lines.index(heard[0]) < min(i for i, l in enumerate(lines) if l.startswith("result: audio"))


def test_the_live_reply_shows_what_was_measured_before_the_words() -> None:
    from rich.console import Console

    from adapters.repl import LiveReply
    from assistant.session import TurnView
    from assistant.turns import Reply

    view = TurnView()
    live = LiveReply(view)
    console = Console(width=80, color_system=None)

    def shown() -> str:
        with console.capture() as capture:
            console.print(live)
        return "\n".join(line.rstrip() for line in capture.get().splitlines())

    view.found(["image · tabby 87%"], [])
    assert shown().splitlines()[0] == "image · tabby 87%"  # before the model has said a word
    view.token("A tabby ")
    assert shown().splitlines()[:2] == ["A tabby", "image · tabby 87%"]
    live.finish(Reply(text="A tabby cat.", results=["image · tabby 87%", "detect · cat 91%"]))
    assert shown().splitlines() == ["A tabby cat.", "image · tabby 87%", "detect · cat 91%"]


def test_voice_on_speaks_each_reply_after_its_text_and_is_kept(models_env, fake_ollama, piper_voice: Path,
                                                               tmp_path: Path) -> None:
    """/voice on: each reply is also spoken with the real Piper voice and saved as an OGG/Opus
    file beside the conversation's outputs; the choice survives a restart; /voice off stops it."""
    import json

    import av

    fake_ollama.script += [answer("The recording has **a dog barking** and a car passing."),
                           answer("You are welcome."), answer("Goodbye.")]
    env = llm_env(fake_ollama)
    first = chat(["/voice on", "What is in the clip?"], "--json", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Voice replies are on" in first.stderr
    reply, voice = (json.loads(line) for line in first.stdout.splitlines())
    assert reply["text"] == "The recording has **a dog barking** and a car passing."
    path = Path(voice["voice"])
    assert path.suffix == ".ogg" and voice["seconds"] > 1 and voice["cut"] is False
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"

    again = chat(["/voice", "Thanks!", "/voice off", "Bye"], "--json", env=env)  # a new process
    assert "Voice replies are on" in again.stderr and "Voice replies are off" in again.stderr
    rows = [json.loads(line) for line in again.stdout.splitlines()]
    assert [sorted(row) for row in rows][1] == ["cut", "seconds", "voice"] and len(rows) == 3
    assert rows[2]["text"] == "Goodbye."


def test_voice_for_a_language_without_a_voice_says_why_and_keeps_the_text(models_env, fake_ollama,
                                                                         piper_voice: Path) -> None:
    fake_ollama.script.append(answer("На фото кошка."))
    result = chat(["/voice on", "Что на фото?"], env=llm_env(fake_ollama))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "На фото кошка." in result.stdout
    assert "no voice reply: There is no voice for Russian replies" in result.stderr
