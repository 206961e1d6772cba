"""The Telegram bot: the real python-telegram-bot Application against a local fake Bot API.

Most tests use a stub agent (fast and deterministic); one runs the real agent in no-LLM mode
on real media. Each test drives the Application in its own event loop, the way
``run_polling`` does: initialize, post_init, start, start_polling ... stop, shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from telegram import Update, User

from adapters.telegram import (MB, PUBLIC_API, PUBLIC_DOWNLOAD_LIMIT, Access, BotOptions, TelegramBot,
                               TelegramSettings, build_application, download_limit, live_chunk,
                               render_markdown, run, serve)
from adapters.telegram.access import SQLiteUsernames
from adapters.telegram.outbox import Outbox
from adapters.telegram.store import open_store
from assistant.attachments import AttachmentStore
from assistant.llm.ollama import OllamaLLM
from assistant.memory import Memory
from assistant.config import Settings
from assistant.session import ViewState
from assistant.turns import Reply, Turn
from tests.conftest import ROOT
from tests.fake_bot_api import BOT_USER, Call, FakeBotAPI, make_user, visible_text
from tests.fake_ollama import FakeOllama, answer
from tests.scripted_llm import FakeTool, ScriptedLLM, call_tools, say

OWNER = 1001  # allowed by id; the chat id of a private chat is the user's id
FRIEND = 1002  # allowed by @username
STRANGER = 6666
GROUP = -100777  # a supergroup OWNER writes in
FAST = BotOptions(album_wait=0.3, draft_interval=0.05, edit_interval=0.1, action_interval=0.5)


def described(name: str, description: str) -> FakeTool:
    """A fake tool with this description (what /tools shows the first sentence of)."""
    tool = FakeTool(name, frozenset(), name)
    tool.description = description  # type: ignore[misc]
    return tool


class StubAgent:
    """The agent interface the bot uses, answering with ``answer(turn, progress)``; received
    files go under ``root`` (each test's temporary folder)."""

    server = "Ollama"

    root: Path

    def __init__(self, answer: Callable[..., Reply] | None = None, memory: Memory | None = None) -> None:
        self.answer = answer or (lambda turn, progress: Reply(text=f"You said: **{turn.text}**"))
        self.memory = memory or Memory(":memory:")  # where @usernames are bound to ids
        self.turns: list[Turn] = []
        self.files: list[list[tuple[str, str, str]]] = []  # per turn: (kind, name, sha256)
        self.paths: list[Path] = []  # every attachment's file, as the bot downloaded it
        self.resets: list[str] = []
        self.tools = [described("sentiment", "Mood of a text. Russian too."),
                      described("detect", "Objects in a photo.")]
        self._stores: dict[str, AttachmentStore] = {}

    def unavailable_tools(self, conversation_id: str) -> dict[str, str]:
        return {"detect": "it needs a model that is not set up."}

    def attachments(self, conversation_id: str) -> AttachmentStore:
        return self._stores.setdefault(conversation_id,
                                       AttachmentStore(folder=self.root / conversation_id.replace(":", "_")))

    def respond(self, turn: Turn, *, on_token=None, on_progress=None, on_results=None, cancel=None) -> Reply:
        self.turns.append(turn)
        self.files.append([(a.kind, a.name, _sha(a.path)) for a in turn.attachments])
        self.paths.extend(a.path for a in turn.attachments)
        self.cancel = cancel
        return self.answer(turn, on_progress or (lambda fraction, message: None))

    def reset(self, conversation_id: str) -> None:
        self.resets.append(conversation_id)

    def output_dir(self, conversation_id: str) -> Path:
        path = self.root / "outputs" / conversation_id.replace(":", "_")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def warm_up(self) -> str | None:
        return None


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _telegram(api: FakeBotAPI, **changes) -> TelegramSettings:
    changes = {key.removeprefix("telegram_"): value for key, value in changes.items()}
    return replace(TelegramSettings(token=api.token, api_base_url=api.url,
                                    allowed_users=(str(OWNER), "@Friend"), voice="off"), **changes)


@contextlib.asynccontextmanager
async def running_bot(api: FakeBotAPI, agent, *, options: BotOptions = FAST, allow_all: bool = False,
                      **settings) -> AsyncIterator[None]:
    core = {key: settings.pop(key) for key in list(settings) if not key.startswith("telegram_")}
    application = build_application(Settings(**core), agent, _telegram(api, **settings),
                                    allow_all=allow_all, options=options)
    await application.initialize()
    await application.post_init(application)
    await application.start()
    await application.updater.start_polling(poll_interval=0, timeout=1,
                                            allowed_updates=[Update.MESSAGE])
    try:
        yield
    finally:
        await application.updater.stop()
        await application.stop()
        await application.shutdown()


def scenario(api: FakeBotAPI, agent, body: Callable[[], object], **kwargs) -> None:
    """Run the bot around ``body()`` (a coroutine function) in a fresh event loop."""
    async def main() -> None:
        async with running_bot(api, agent, **kwargs):
            await body()
    asyncio.run(main())


@pytest.fixture(autouse=True)
def _stub_files_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StubAgent, "root", tmp_path / "attachments", raising=False)


@pytest.fixture()
def api() -> FakeBotAPI:
    with FakeBotAPI() as server:
        yield server


# -- text, commands, access -----------------------------------------------------------------

def test_text_turn_rendered_as_html_and_commands_registered(api: FakeBotAPI) -> None:
    agent = StubAgent()
    api.message(OWNER, text="Hello <there> & you")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, agent, body)
    commands = api.sent("setMyCommands")[0].params["commands"]
    assert [c["command"] for c in commands] == ["start", "help", "reset", "cancel", "tools", "model", "voice"]
    assert agent.turns[0].conversation_id == f"telegram:{OWNER}"
    assert agent.turns[0].text == "Hello <there> & you"
    sent = api.sent("sendMessage", OWNER)[0].params
    assert sent["parse_mode"] == "HTML"
    assert sent["text"] == "You said: <b>Hello &lt;there&gt; &amp; you</b>"
    assert any(c.params["action"] == "typing" for c in api.sent("sendChatAction", OWNER))


def test_stranger_gets_one_reply_and_nothing_is_processed(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent()
    api.message(STRANGER, text="hi")
    api.message(STRANGER, photo=media / "images/inet_zebra.jpg", caption="what is this?")
    api.message(STRANGER, text="/reset")
    api.message(FRIEND, user=make_user(FRIEND, username="friend"), text="I'm allowed by name")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(FRIEND))

    scenario(api, agent, body)
    refusals = api.texts(STRANGER)
    assert len(refusals) == 1
    assert str(STRANGER) in refusals[0] and "ASSISTANT_TELEGRAM_ALLOWED_USERS" in refusals[0]
    assert [t.text for t in agent.turns] == ["I'm allowed by name"]
    assert agent.resets == []
    assert not api.sent("getFile") and not api.downloads


def test_commands(api: FakeBotAPI) -> None:
    agent = StubAgent()
    for text in ("/start", "/help", "/tools", "/reset", "/nonsense"):
        api.message(OWNER, text=text)

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 5)

    scenario(api, agent, body)
    start, help_, tools, reset, unknown = api.texts(OWNER)
    assert "photo" in start and "/reset" in help_
    assert "<b>sentiment</b>: Mood of a text." in tools and "Russian too" not in tools
    assert "<b>detect</b>: Objects in a photo. (off: it needs a model that is not set up.)" in tools
    assert agent.resets == [f"telegram:{OWNER}"] and "forgotten" in reset
    assert "/help" in unknown
    assert agent.turns == []


def test_username_is_bound_to_the_first_id_seen_with_it(api: FakeBotAPI, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    memory = Memory(tmp_path / "bot.sqlite3")
    carol, impostor = 4001, 4002
    api.message(carol, user=make_user(carol, username="Carol"), text="hello, I am carol")

    async def first() -> None:
        await api.wait_for(lambda: api.texts(carol))

    scenario(api, StubAgent(memory=memory), first, telegram_allowed_users=("@carol",))
    memory.close()

    # A restart: the binding comes from the database. Carol renamed herself; someone else took the name.
    agent = StubAgent(memory=Memory(tmp_path / "bot.sqlite3"))
    api.message(carol, user=make_user(carol, username="carol_new"), text="renamed, still me")
    api.message(impostor, user=make_user(impostor, username="carol"), text="I am carol now")

    async def second() -> None:
        await api.wait_for(lambda: len(api.texts(carol)) == 2 and api.texts(impostor))

    with caplog.at_level(logging.WARNING, logger="assistant.telegram"):
        scenario(api, agent, second, telegram_allowed_users=("@carol",))
    assert [t.text for t in agent.turns] == ["renamed, still me"]
    (refusal,) = api.texts(impostor)
    assert str(impostor) in refusal
    assert any("4002" in r.getMessage() and "@carol" in r.getMessage() and "4001" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_username_bindings_made_in_core_memory_survive_the_move_to_the_channels_table(
        api: FakeBotAPI, tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    Memory(db).close()
    old = sqlite3.connect(db)  # a binding as the bot stored it before the channel had its own tables
    old.execute("INSERT INTO telegram_usernames (username, user_id, bound) VALUES ('carol', 4001, 0)")
    old.commit()
    old.close()
    carol, impostor = 4001, 4002
    api.message(carol, user=make_user(carol, username="carol_new"), text="renamed, still me")
    api.message(impostor, user=make_user(impostor, username="carol"), text="I am carol now")
    agent = StubAgent(memory=Memory(db))

    async def body() -> None:
        await api.wait_for(lambda: api.texts(carol) and api.texts(impostor))

    scenario(api, agent, body, telegram_allowed_users=("@carol",))
    assert [t.text for t in agent.turns] == ["renamed, still me"]
    assert SQLiteUsernames(open_store(db)).bindings() == {"carol": 4001}
    tables = {row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "telegram_usernames" not in tables and "telegram_allowed_usernames" in tables


def test_restart_says_a_turn_was_interrupted(api: FakeBotAPI, tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage

    memory = Memory(tmp_path / "bot.sqlite3")
    memory.begin_turn(f"telegram:{OWNER}", [HumanMessage(content="analyse my long video")])

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, StubAgent(memory=memory), body)
    (notice,) = api.texts(OWNER)
    assert "analyse my long video" in notice and "interrupted" in notice
    assert memory.open_conversations("telegram:") == []


def test_run_refuses_to_start_without_token_or_allowlist(capsys: pytest.CaptureFixture) -> None:
    assert run(argparse.Namespace(allow_all=False), Settings(), TelegramSettings(allowed_users=("1",))) == 2
    assert "TELEGRAM_BOT_TOKEN" in capsys.readouterr().err
    assert run(argparse.Namespace(allow_all=False), Settings(), TelegramSettings(token="1:x")) == 2
    err = capsys.readouterr().err
    assert "ASSISTANT_TELEGRAM_ALLOWED_USERS" in err and "--allow-all" in err


def test_cli_telegram_without_allowlist_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    from cli.main import main

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:x")
    monkeypatch.delenv("ASSISTANT_TELEGRAM_ALLOWED_USERS", raising=False)
    assert main(["telegram"]) == 2
    err = capsys.readouterr().err
    assert "--allow-all" in err and "Traceback" not in err


def test_allow_all_serves_everyone(api: FakeBotAPI) -> None:
    agent = StubAgent()
    api.message(STRANGER, text="anyone home?")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(STRANGER))

    scenario(api, agent, body, allow_all=True, telegram_allowed_users=())
    assert [t.text for t in agent.turns] == ["anyone home?"]


# -- media ----------------------------------------------------------------------------------

def test_photo_voice_video_audio_and_documents_become_attachments(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text=f"got {len(turn.attachments)}"))
    photo = api.message(OWNER, photo=media / "images/inet_zebra.jpg", caption="What animal?")
    api.message(OWNER, voice=media / "audio/voice_note_ru.oga")
    api.message(OWNER, video=media / "video/car_traffic_small.mp4", caption="count the cars")
    api.message(OWNER, audio=media / "audio/bird_robin.mp3")
    api.message(OWNER, document=media / "audio/us8k_siren_102853-8-0-0.wav", mime_type="audio/x-wav")
    api.message(OWNER, document=media / "images/inet_pizza.jpg", mime_type="image/jpeg", caption="food?")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 6)

    scenario(api, agent, body)
    expected = [("image", "images/inet_zebra.jpg", "What animal?"),
                ("voice", "audio/voice_note_ru.oga", ""),
                ("video", "video/car_traffic_small.mp4", "count the cars"),
                ("audio", "audio/bird_robin.mp3", ""),
                ("audio", "audio/us8k_siren_102853-8-0-0.wav", ""),
                ("image", "images/inet_pizza.jpg", "food?")]
    assert [t.text for t in agent.turns] == [text for _, _, text in expected]
    for files, (kind, source, _) in zip(agent.files, expected):
        assert [(k, sha) for k, _, sha in files] == [(kind, _sha(media / source))]
    largest = photo["photo"][-1]["file_id"]
    assert api.sent("getFile")[0].params["file_id"] == largest
    assert len(api.downloads) == 6
    root = Path(__file__).resolve().parent.parent
    assert not any(path.is_relative_to(root) for path in agent.paths)  # never into the repository
    assert all(path.is_relative_to(agent.root) and path.exists() for path in agent.paths)  # kept with their ids


def test_follow_up_about_a_photo_from_5_turns_earlier_after_a_restart(api: FakeBotAPI, media: Path,
                                                                      make_agent) -> None:
    photos = ["inet_zebra.jpg", "inet_pizza.jpg", "inet_goldfish.jpg", "inet_school_bus.jpg", "ext_tabby_cat.jpg"]
    first = make_agent(ScriptedLLM([say(f"Photo {n}.") for n in range(1, 6)]))
    for name in photos:
        api.message(OWNER, photo=media / "images" / name)

    async def five_photos() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 5)

    scenario(api, first, five_photos)
    first.memory.close()

    # A restart: a new agent on the same database. The first photo is asked about 5 turns later.
    llm = ScriptedLLM([call_tools(("detect", {"attachment_id": "att_1"})), say("The first photo shows a zebra."),
                       say("A new photo.")])
    second = make_agent(llm)
    folder = second.attachment_dir(f"telegram:{OWNER}")
    api.message(OWNER, text="Find the objects in the first photo")
    api.message(OWNER, photo=media / "images" / "inet_pizza.jpg")
    api.message(OWNER, text="/reset")

    async def follow_up() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 8)

    scenario(api, second, follow_up)
    texts = api.texts(OWNER)
    assert texts[5].startswith("The first photo shows a zebra.")
    assert second.tools.get("detect").calls == [{"attachment_id": "att_1"}]  # type: ignore[attr-defined]
    detect_result = [m for m in llm.calls[1].messages if getattr(m, "name", None) == "detect"][-1]
    assert "error" not in detect_result.content
    assert any("Attachments: att_6 (image, photo_" in str(m.content) for m in llm.calls[2].messages)
    assert "forgotten" in texts[7] and not folder.exists()  # /reset deletes the conversation's files


def test_album_is_one_turn_with_the_caption(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text="three photos"))
    images = ["inet_goldfish.jpg", "inet_school_bus.jpg", "ext_tabby_cat.jpg"]
    for index, name in enumerate(images):
        api.message(OWNER, photo=media / "images" / name, media_group_id="album1",
                    caption="Which one is the cat?" if index == 1 else None)
    api.message(OWNER, text="and after the album")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2)

    scenario(api, agent, body)
    assert len(agent.turns) == 2
    album, after = agent.turns
    assert album.text == "Which one is the cat?"
    assert [sha for _, _, sha in agent.files[0]] == [_sha(media / "images" / n) for n in images]
    assert after.text == "and after the album"


def test_oversized_file_is_refused_before_download(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent()
    api.message(OWNER, video=media / "video/car_traffic_small.mp4", file_size=3 * MB)
    api.message(OWNER, document=media / "images/inet_zebra.jpg", mime_type="application/pdf")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2)

    scenario(api, agent, body, max_file_mb=2.0)
    too_big, unsupported = api.texts(OWNER)
    assert "too large" in too_big and "3 MB" in too_big and "2 MB" in too_big
    assert "application/pdf" in unsupported
    assert not api.sent("getFile") and not api.downloads and agent.turns == []


def test_download_limit_public_and_self_hosted() -> None:
    public = TelegramSettings()
    assert download_limit(Settings(max_file_mb=200), public) == PUBLIC_DOWNLOAD_LIMIT
    assert download_limit(Settings(max_file_mb=5), public) == 5 * MB
    assert public.api_base_url == PUBLIC_API
    local = TelegramSettings(api_base_url="http://localhost:8081")
    assert download_limit(Settings(max_file_mb=200), local) == 200 * MB


def test_progress_goes_into_the_draft_and_media_reply(api: FakeBotAPI, media: Path,
                                                      tmp_path: Path) -> None:
    photo = shutil.copy(media / "images/street_scooters.jpg", tmp_path / "annotated.jpg")
    video = shutil.copy(media / "video/car_traffic_small.mp4", tmp_path / "annotated.mp4")
    finish = threading.Event()

    def answer(turn: Turn, progress) -> Reply:
        for step in range(1, 4):
            progress(step / 4, "Analysing frames")
            finish.wait(10)  # until the draft shows the progress
            finish.clear()
        return Reply(text="Found **3 cars**.", media=[Path(photo), Path(video)])

    agent = StubAgent(answer)
    api.message(OWNER, video=media / "video/car_traffic_small.mp4")

    async def body() -> None:
        for step in range(1, 4):
            await api.wait_for(lambda: any(f"Analysing frames… {step * 25}%" in c.params["text"]
                                           for c in api.sent("sendMessageDraft", OWNER)))
            finish.set()
        await api.wait_for(lambda: api.sent("sendVideo"))

    scenario(api, agent, body)
    drafts = api.sent("sendMessageDraft", OWNER)
    assert len({c.params["draft_id"] for c in drafts}) == 1  # one draft for the reply
    assert api.texts(OWNER) == ["Found <b>3 cars</b>."]  # no separate status message
    assert not api.sent("editMessageText") and not api.sent("deleteMessage")
    assert api.sent("sendPhoto")[0].files["photo"][1] == Path(photo).read_bytes()
    assert api.sent("sendVideo")[0].files["video"][1] == Path(video).read_bytes()
    actions = [c.params["action"] for c in api.sent("sendChatAction", OWNER)]
    assert "upload_photo" in actions and "upload_video" in actions


def test_photo_refused_as_media_is_sent_as_a_document(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text="", media=[media / "images/inet_zebra.jpg"]))
    api.fail_next("sendPhoto", 400, "Bad Request: PHOTO_INVALID_DIMENSIONS", retry_after=None)
    api.message(OWNER, text="draw boxes")

    async def body() -> None:
        await api.wait_for(lambda: api.sent("sendDocument"))

    scenario(api, agent, body)
    document = api.sent("sendDocument")[0].files["document"]
    assert document == ("inet_zebra.jpg", (media / "images/inet_zebra.jpg").read_bytes())
    assert api.texts(OWNER) == []  # no text reply when the agent only returned media


# -- streaming and /cancel -------------------------------------------------------------------

def hold_until(condition: Callable[[], bool]) -> None:
    """Called from the model's stream (a worker thread): wait until the bot has shown it."""
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def drafts(api: FakeBotAPI, chat_id: int) -> list[Call]:
    return api.sent("sendMessageDraft", chat_id)


def test_private_chat_streams_drafts_before_the_final_message(api: FakeBotAPI, make_agent) -> None:
    answer = "A zebra has black and white stripes"
    llm = ScriptedLLM([say(answer)], pace=lambda streamed: hold_until(
        lambda: any(c.params["text"] == streamed.strip() for c in drafts(api, OWNER))))
    api.message(OWNER, text="tell me about zebras")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, make_agent(llm), body)
    shown = [c.params["text"] for c in drafts(api, OWNER)]
    words = answer.split(" ")
    growing = [" ".join(words[:n]) for n in range(1, len(words))]
    assert shown[:len(growing)] == growing and set(shown[len(growing):]) <= {answer}
    assert len({c.params["draft_id"] for c in drafts(api, OWNER)}) == 1  # one draft for the reply
    final = api.sent("sendMessage", OWNER)[0]
    assert api.calls.index(final) > max(api.calls.index(c) for c in drafts(api, OWNER))
    assert api.texts(OWNER) == [answer]


def test_group_streams_by_editing_one_message(api: FakeBotAPI, make_agent) -> None:
    def streamed_message() -> str:
        sent = api.sent("sendMessage", GROUP)
        return visible_text(api.shown(GROUP, sent[0].result["message_id"])) if sent else ""

    llm = ScriptedLLM([call_tools(("sentiment", {"text": "busy road"})), say("Three cars and **one** bus")],
                      pace=lambda streamed: hold_until(  # the results block is under the words
                          lambda: streamed_message().startswith(streamed.strip().replace("**", ""))))
    api.message(GROUP, user=make_user(OWNER), chat_type="supergroup",
                text=f"@{BOT_USER['username']} what is on the road?")

    async def body() -> None:
        await api.wait_for(lambda: "one bus" in streamed_message())  # the last word: the reply

    scenario(api, make_agent(llm), body)
    assert not api.sent("sendMessageDraft")  # drafts are for private chats
    (streamed,) = api.sent("sendMessage", GROUP)  # one message, edited as the text grew ...
    edits = api.sent("editMessageText", GROUP)
    assert len(edits) >= 4 and {c.params["message_id"] for c in edits} == {streamed.result["message_id"]}
    final = api.shown(GROUP, streamed.result["message_id"])  # ... into the reply
    assert final.startswith("Three cars and <b>one</b> bus\n\n<code>sentiment · ")
    typing = [c for c in api.calls if c.method == "sendChatAction"]
    assert all(api.calls.index(c) < api.calls.index(streamed) for c in typing)  # none while editing


def test_the_draft_shows_what_was_measured_before_the_model_answers(api: FakeBotAPI, media: Path,
                                                                      make_agent) -> None:
    def speak(messages: list) -> AIMessage:  # the model speaks once the draft showed the result
        hold_until(lambda: any("image · tabby 87%" in c.params["text"] for c in drafts(api, OWNER)))
        return AIMessage(content="A tabby cat, fairly sure.")

    api.message(OWNER, photo=media / "images/ext_tabby_cat.jpg")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, make_agent(ScriptedLLM([speak])), body)
    first = next(visible_text(c.params["text"]) for c in drafts(api, OWNER) if "tabby" in c.params["text"])
    assert first == "image · tabby 87%"  # the measured line alone, before any word of the model
    assert api.texts(OWNER) == ["A tabby cat, fairly sure.\n\n<code>image · tabby 87%</code>"]


def test_a_draft_answered_429_is_skipped_and_the_reply_arrives(api: FakeBotAPI, make_agent) -> None:
    def after_the_draft_of(streamed: str) -> None:
        if streamed == "one ":  # the first draft is answered 429
            hold_until(lambda: any(c.method == "sendMessageDraft" for c in api.calls))
        else:
            hold_until(lambda: any(c.params["text"] == streamed.strip() for c in drafts(api, OWNER)))

    api.fail_next("sendMessageDraft", 429, retry_after=1)
    llm = ScriptedLLM([say("one two three")], pace=after_the_draft_of)
    api.message(OWNER, text="count")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, make_agent(llm), body)
    failed = [c for c in api.calls if c.method == "sendMessageDraft"][0]
    assert failed.error and "retry after" in failed.error.lower() and failed.params["text"] == "one"
    assert drafts(api, OWNER)[0].params["text"] == "one two"  # "one" was skipped, not retried
    assert api.texts(OWNER) == ["one two three"]


def test_the_streamed_view_fits_one_message() -> None:
    paragraphs = [f"Paragraph {i}: " + " ".join(["**word**"] * 300) for i in range(8)]
    state = ViewState(text="\n\n".join(paragraphs), progress=(0.5, "Analysing frames"))
    chunk = live_chunk(state)
    shown = visible_text(chunk.html)
    assert len(shown) <= 4096 and shown.startswith("Paragraph 7") and shown.endswith("Analysing frames… 50%")
    assert live_chunk(ViewState()) is None  # nothing to show yet: "typing…" only
    assert live_chunk(ViewState(queued=2)).plain.startswith("⏳ Another file is being analysed; yours is number 2")


def test_cancel_stops_the_reply_in_progress(api: FakeBotAPI, make_agent) -> None:
    llm = ScriptedLLM([say("one two three four")])
    llm.pace = lambda streamed: hold_until(lambda: llm.cancel is not None and llm.cancel.is_set())
    agent = make_agent(llm)
    api.message(OWNER, text="/cancel")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))  # nothing was running
        api.message(OWNER, text="count slowly")
        await api.wait_for(lambda: any(c.params["text"] == "one" for c in drafts(api, OWNER)))
        api.message(OWNER, text="/cancel")
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2)

    scenario(api, agent, body)
    idle, cancelled = api.texts(OWNER)
    assert "no reply in progress" in idle
    assert cancelled == "one\n\n<i>(cancelled)</i>"
    assert agent.memory.turns(f"telegram:{OWNER}")  # the cancelled turn is stored


# -- long replies and Markdown ---------------------------------------------------------------

def test_long_reply_is_split_at_paragraphs(api: FakeBotAPI) -> None:
    paragraphs = [f"Paragraph {i}: " + " ".join(["word"] * 300) for i in range(8)]
    agent = StubAgent(lambda turn, progress: Reply(text="\n\n".join(paragraphs)))
    api.message(OWNER, text="tell me a lot")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER) and "Paragraph 7" in api.texts(OWNER)[-1])

    scenario(api, agent, body)
    texts = api.texts(OWNER)
    assert len(texts) >= 3
    assert all(len(text) <= 4096 for text in texts)
    assert [p for text in texts for p in text.split("\n\n")] == paragraphs  # cut between paragraphs


def test_markdown_renders_to_html_telegram_accepts() -> None:
    text = ("# Result\n\nA **zebra** (97 %) <script>alert(1)</script> & _maybe_ `x<y` "
            "[docs](https://example.org/?a=1&b=2) [bad](javascript:alert(1)) ~~old~~\n\n"
            "- one\n- two\n  - nested\n\n3. three\n4. four\n\n```python\nif a < b:\n    pass\n```\n\n"
            "> quoted\n\n| label | score |\n|---|---|\n| zebra | 0.97 |\n\nUnclosed **bold and *stars")
    (chunk,) = render_markdown(text)
    shown = visible_text(chunk.html)  # raises like Telegram's "can't parse entities"
    assert "<b>zebra</b>" in chunk.html and "<i>maybe</i>" in chunk.html and "<code>x&lt;y</code>" in chunk.html
    assert '<a href="https://example.org/?a=1&amp;b=2">docs</a>' in chunk.html
    assert "<s>old</s>" in chunk.html and '<pre><code class="language-python">' in chunk.html
    assert "<script>" in shown and "javascript" not in re.findall(r'href="([^"]*)"', chunk.html)[0]
    assert "• one" in shown and "   • nested" in shown and "3. three\n4. four" in shown
    assert "Unclosed **bold and *stars" in shown


def test_oversized_block_goes_as_plain_text() -> None:
    code = "```\n" + "\n".join(f"line {i} <tag>" for i in range(900)) + "\n```"
    chunks = render_markdown(f"Intro **bold**\n\n{code}\n\nOutro")
    assert chunks[0].html == "Intro <b>bold</b>"
    assert all(c.html is None and len(c.plain) <= 4096 for c in chunks[1:-1])
    assert chunks[-1].html == "Outro"


def test_html_refused_by_telegram_is_resent_as_plain_text(api: FakeBotAPI) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text="**bold** answer"))
    api.fail_next("sendMessage", 400, "Bad Request: can't parse entities: whatever", retry_after=None)
    api.message(OWNER, text="hi")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, agent, body)
    assert api.texts(OWNER) == ["**bold** answer"]
    assert "parse_mode" not in api.sent("sendMessage", OWNER)[0].params


# -- under load and faults -------------------------------------------------------------------

def test_handler_error_apologises_with_an_id_and_the_bot_keeps_serving(
        api: FakeBotAPI, caplog: pytest.LogCaptureFixture) -> None:
    def answer(turn: Turn, progress) -> Reply:
        if turn.text == "boom":
            raise RuntimeError("the stub agent exploded")
        return Reply(text="fine")

    agent = StubAgent(answer)
    api.message(OWNER, text="boom")
    api.message(OWNER, text="and now?")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2)

    with caplog.at_level(logging.ERROR, logger="assistant.telegram"):
        scenario(api, agent, body)
    apology, answer_text = api.texts(OWNER)
    error_id = re.search(r"error id ([0-9a-f]{8})", apology).group(1)
    assert "exploded" not in apology and answer_text == "fine"
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "exploded" in str(logged[0].exc_info[1])


def test_two_chats_concurrently_and_one_chat_in_order(api: FakeBotAPI) -> None:
    other = 2002
    release = threading.Event()

    def answer(turn: Turn, progress) -> Reply:
        if turn.text == "slow":
            release.wait(10)  # held until the other chat has been answered
        return Reply(text=f"re: {turn.text}")

    agent = StubAgent(answer)
    for text in ("slow", "second", "third"):
        api.message(OWNER, text=text)
    api.message(other, user=make_user(other), text="other chat")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(other))
        assert api.texts(OWNER) == []  # the first chat is still busy with "slow"
        release.set()
        await api.wait_for(lambda: len(api.texts(OWNER)) == 3)

    scenario(api, agent, body, telegram_allowed_users=(str(OWNER), str(other)))
    assert api.texts(other) == ["re: other chat"]
    assert api.texts(OWNER) == ["re: slow", "re: second", "re: third"]


def test_heavy_jobs_queue_and_the_waiting_user_is_told(api: FakeBotAPI, media: Path) -> None:
    other = 2002
    release = threading.Event()

    def answer(turn: Turn, progress) -> Reply:
        if turn.conversation_id == f"telegram:{OWNER}":
            release.wait(10)
        return Reply(text="done")

    agent = StubAgent(answer)
    api.message(OWNER, photo=media / "images/inet_zebra.jpg")

    async def body() -> None:
        await api.wait_for(lambda: agent.turns)  # the owner's job holds the only slot
        api.message(other, user=make_user(other), photo=media / "images/inet_pizza.jpg")
        await api.wait_for(lambda: api.sent("sendMessageDraft", other))
        release.set()
        await api.wait_for(lambda: "done" in api.texts(other) and "done" in api.texts(OWNER))

    scenario(api, agent, body, telegram_allowed_users=(str(OWNER), str(other)))
    waiting = api.sent("sendMessageDraft", other)[0].params["text"]
    assert "number 1 in the queue" in waiting  # told in the draft, not in a message of its own
    assert api.texts(other) == ["done"]


def test_a_text_turn_waits_for_a_slot_when_its_chat_has_files(api: FakeBotAPI, media: Path) -> None:
    other = 2002
    release = threading.Event()

    def answer(turn: Turn, progress) -> Reply:
        if turn.conversation_id == f"telegram:{OWNER}":
            release.wait(10)
        return Reply(text=f"re: {turn.text}")

    agent = StubAgent(answer)
    api.message(other, user=make_user(other), photo=media / "images/inet_pizza.jpg")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(other))
        api.message(OWNER, photo=media / "images/inet_zebra.jpg")
        await api.wait_for(lambda: len(agent.turns) == 2)  # the owner's job holds the only slot
        api.message(other, user=make_user(other), text="now find the objects in it")
        await api.wait_for(lambda: any("in the queue" in c.params["text"]
                                       for c in api.sent("sendMessageDraft", other)))
        release.set()
        await api.wait_for(lambda: len(api.texts(other)) == 2)

    scenario(api, agent, body, telegram_allowed_users=(str(OWNER), str(other)))
    assert api.texts(other)[-1] == "re: now find the objects in it"


def test_stopping_the_bot_cancels_a_running_turn(api: FakeBotAPI) -> None:
    seen: list[bool] = []

    def answer(turn: Turn, progress) -> Reply:
        seen.append(agent.cancel.wait(20))  # a long job that honours cancel
        return Reply(text="_(cancelled)_")

    agent = StubAgent(answer)
    api.message(OWNER, text="analyse something long")

    async def body() -> None:
        await api.wait_for(lambda: agent.turns)  # the job runs; now the bot is stopped

    scenario(api, agent, body)
    assert seen == [True]


def test_flood_limit_429_is_retried_after_retry_after(api: FakeBotAPI) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text="delivered anyway"))
    api.fail_next("sendMessage", 429, retry_after=1)
    api.message(OWNER, text="hi")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, agent, body)
    attempts = [c for c in api.calls if c.method == "sendMessage"]
    assert attempts[0].error and "retry after" in attempts[0].error.lower()
    assert attempts[1].error is None and attempts[1].params["text"] == "delivered anyway"


def test_polling_survives_a_failed_get_updates(api: FakeBotAPI) -> None:
    agent = StubAgent()
    api.fail_next("getUpdates", 502, "Bad Gateway", retry_after=None)
    api.message(OWNER, text="still there?")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    scenario(api, agent, body)
    assert [c.error for c in api.calls if c.method == "getUpdates"][0] == "Bad Gateway"
    assert [t.text for t in agent.turns] == ["still there?"]


def test_a_reply_finished_during_an_outage_is_delivered_when_the_bot_api_is_back(
        api: FakeBotAPI, tmp_path: Path) -> None:
    def answer(turn: Turn, progress) -> Reply:
        api.go_down()  # the Bot API becomes unreachable while the turn works
        return Reply(text=f"Answer to **{turn.text}**")

    agent = StubAgent(answer, memory=Memory(tmp_path / "bot.sqlite3"))
    api.message(OWNER, text="a long question")

    async def body() -> None:
        # Longer than the three tries of a send (and, before the outbox, than the apology).
        await api.wait_for(lambda: sum(path.endswith("/sendMessage") for path in api.refused) >= 5, timeout=30)
        api.come_back()
        await api.wait_for(lambda: api.texts(OWNER), timeout=30)

    scenario(api, agent, body, options=replace(FAST, outbox_retry=0.2, outbox_retry_max=0.5))
    assert api.texts(OWNER) == ["Answer to <b>a long question</b>"]
    assert not any("Sorry" in text for text in api.texts(OWNER))


def test_replies_kept_when_the_bot_stopped_during_an_outage_come_after_a_restart(
        api: FakeBotAPI, tmp_path: Path) -> None:
    def answer(turn: Turn, progress) -> Reply:
        api.go_down()
        return Reply(text="kept for later")

    db = tmp_path / "bot.sqlite3"
    agent = StubAgent(answer, memory=Memory(db))
    api.message(OWNER, text="question")

    async def until_kept() -> None:
        await api.wait_for(lambda: Outbox(open_store(db)).chats() == [OWNER], timeout=30)

    scenario(api, agent, until_kept, options=replace(FAST, outbox_retry=30.0))
    api.come_back()
    assert api.texts(OWNER) == []

    async def after_restart() -> None:
        await api.wait_for(lambda: api.texts(OWNER), timeout=30)

    scenario(api, StubAgent(memory=Memory(db)), after_restart, options=replace(FAST, outbox_retry=0.1))
    # First: the update was not acknowledged while the Bot API was down, so Telegram may hand it
    # to the new run too; that answer comes after the kept one.
    assert api.texts(OWNER)[0] == "kept for later"


def test_a_token_revoked_while_running_stops_the_bot_with_status_2(
        api: FakeBotAPI, capsys: pytest.CaptureFixture) -> None:
    def answer(turn: Turn, progress) -> Reply:
        api.revoke_token()  # in @BotFather, while the bot works
        return Reply(text="not deliverable")

    api.message(OWNER, text="hi")
    telegram = _telegram(api)
    application = build_application(Settings(), StubAgent(answer), telegram, options=FAST)
    watchdog = threading.Timer(60, signal.raise_signal, (signal.SIGINT,))  # Ctrl+C: status 0
    watchdog.start()
    try:
        status = serve(application, telegram)
    finally:
        watchdog.cancel()
    assert status == 2
    err = capsys.readouterr().err
    assert "TELEGRAM_BOT_TOKEN" in err and "revoked" in err and api.token not in err


def test_a_file_gone_from_telegram_is_named_as_such(api: FakeBotAPI, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    agent = StubAgent()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff not downloaded anyway")
    message = api.message(OWNER, photo=photo, caption="what is it?")
    for size in message["photo"]:
        api.lose_file(size["file_id"])  # its download answers 404 Not Found

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OWNER))

    with caplog.at_level(logging.INFO, logger="assistant.telegram"):
        scenario(api, agent, body)
    (told,) = api.texts(OWNER)
    assert "no longer available" in told and "send it again" in told
    assert agent.turns == []
    assert "InvalidToken" not in caplog.text and "404" in caplog.text


# -- end to end with the real agent ----------------------------------------------------------

def test_real_agent_without_llm_answers_a_photo(api: FakeBotAPI, media: Path, models_env: Path) -> None:
    from assistant.agent import build_agent

    settings = Settings.from_env()
    agent = build_agent(settings, use_llm=False)
    api.message(OWNER, photo=media / "images/street_scooters.jpg", caption="What objects are there?")
    api.message(OWNER, text="/reset")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2, timeout=120)

    scenario(api, agent, body)
    answer, reset = api.texts(OWNER)
    assert "image" in answer.lower() or "detect" in answer.lower()
    assert "forgotten" in reset
    sent_media = api.sent("sendPhoto") + api.sent("sendDocument")
    assert sent_media, "the annotated photo from detection is sent back"


@pytest.mark.parametrize("signals", [1, 2], ids=["Ctrl-C", "Ctrl-C twice"])
def test_ctrl_c_while_a_tool_works_stops_the_bot_cleanly(api: FakeBotAPI, media: Path, models_env: Path,
                                                         fake_ollama: FakeOllama, tmp_path: Path,
                                                         signals: int) -> None:
    """`assistant telegram` stopped (SIGINT) while the video tool works: the turn stops at the
    tool's next step and is stored as cancelled, and the process ends normally; a second
    SIGINT leaves at once (130), the turn then told as interrupted at the next start. A second
    signal used to abort the process (SIGABRT, a worker thread inside native code at
    interpreter shutdown)."""
    fake_ollama.script.append(answer("Cars."))
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": api.token, "TELEGRAM_API_BASE_URL": api.url,
           "ASSISTANT_TELEGRAM_ALLOWED_USERS": str(OWNER), "ASSISTANT_TELEGRAM_VOICE": "off",
           "OLLAMA_HOST": fake_ollama.url}
    api.message(OWNER, video=media / "video/car_traffic_small.mp4", caption="what happens here?")
    process = subprocess.Popen([sys.executable, "-m", "assistant", "telegram"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:  # the video tool is at work
            if list((tmp_path / "outputs").rglob("*.partial.mp4")):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the video tool never started")
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()

    # Two signals: stopped cleanly (0), left at once (130), or, when the second signal comes as
    # the interpreter finalises (it restores the default handler), ended by SIGINT itself, which
    # a shell reports as 130 too. Never an abort (SIGABRT, 134).
    allowed = (0,) if signals == 1 else (0, 130, -signal.SIGINT)
    assert process.returncode in allowed, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err
    memory = Memory(tmp_path / "test.sqlite3")
    conversation = f"telegram:{OWNER}"
    if process.returncode == 130:  # left at once: the turn is open, told as interrupted next time
        assert "Stopped at once" in err
        assert memory.open_conversations("") == [conversation]
        return
    assert memory.open_conversations("") == []  # the turn is closed...
    (stored,) = memory.turns(conversation)
    assert "cancelled" in str(stored.messages[-1].content)  # ...as cancelled


def test_a_voice_note_is_answered_from_its_words(api: FakeBotAPI, media: Path, shared_models: Path,
                                                 make_agent) -> None:
    from langchain_core.messages import HumanMessage

    from tools.base import ModelSource
    from tools.registry import ToolRegistry
    from tools.speech import SpeechTool

    heard: list[str] = []

    def answer(messages) -> object:
        heard.append([m for m in messages if isinstance(m, HumanMessage)][-1].content)
        return say("Понял.")

    speech = SpeechTool(ModelSource(str(shared_models / "whisper-base"), "ASSISTANT_SPEECH_MODEL"), "cpu")
    tools = ToolRegistry([FakeTool("audio", frozenset({"audio", "voice"}), "Speech"), speech])
    agent = make_agent(ScriptedLLM([answer, answer]), tools=tools)
    api.message(OWNER, voice=media / "audio/voice_note_ru.oga")
    api.message(OWNER, voice=media / "audio/voice_note_ru.oga", forwarded_from="Anna")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2, timeout=300)

    scenario(api, agent, body)
    own, forwarded = heard
    assert own.startswith("Это тестовый текст на русском языке")  # answered as if typed
    assert forwarded.startswith("Forwarded voice note att_2 from Anna says: \u201cЭто тестовый текст")
    first = api.texts(OWNER)[0]
    assert first.index("speech · ru · \u201cЭто тестовый текст") < first.index("Понял.")  # heard, first
    assert "audio · Speech" in first


# -- groups ----------------------------------------------------------------------------------

BOT = f"@{BOT_USER['username']}"
BOB = 3003  # in the group, on no allowlist
OTHER_GROUP = -100888  # a group nobody allowed


def group_message(api: FakeBotAPI, user_id: int, chat_id: int = GROUP, **fields) -> dict:
    return api.message(chat_id, user=make_user(user_id, first_name="Bob" if user_id == BOB else "Ann"),
                       chat_type="supergroup", **fields)


def test_group_chatter_is_ignored_and_nothing_of_it_downloaded(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent()
    group_message(api, OWNER, text="hello everyone")
    group_message(api, OWNER, photo=media / "images/inet_zebra.jpg", caption="look at this")
    for name in ("inet_goldfish.jpg", "inet_school_bus.jpg"):
        group_message(api, OWNER, photo=media / "images" / name, media_group_id="chatter-album")
    group_message(api, OWNER, voice=media / "audio/voice_note_ru.oga")
    group_message(api, OWNER, text="/help@other_bot")  # another bot's command
    group_message(api, OWNER, text="/weather Paris")  # a bare command no bot of ours knows
    group_message(api, OWNER, text="mail me at someone@test_assistant_bot.org")  # no mention
    group_message(api, STRANGER, text="hi all")
    group_message(api, STRANGER, photo=media / "images/inet_pizza.jpg")

    async def body() -> None:
        await asyncio.sleep(1.0)  # the album is complete after 0.3 s
        group_message(api, OWNER, text=f"{BOT} ping")
        await api.wait_for(lambda: api.texts(GROUP))

    scenario(api, agent, body)
    assert api.texts(GROUP) == ["You said: <b>ping</b>"]
    assert [t.text for t in agent.turns] == ["ping"]
    assert not api.sent("getFile") and not api.downloads  # nothing of the chatter was fetched
    assert api.texts(STRANGER) == []  # chatter gets no refusal either
    assert not any(c.params.get("chat_id") == STRANGER for c in api.calls)


def test_group_answers_a_mention_a_reply_to_the_bot_and_a_command_to_it(api: FakeBotAPI) -> None:
    agent = StubAgent()

    async def body() -> None:
        group_message(api, OWNER, text=f"{BOT} what is a zebra?")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 1)
        first = api.sent("sendMessage", GROUP)[0].result
        group_message(api, OWNER, text="and a horse?", reply_to=first)
        await api.wait_for(lambda: len(api.texts(GROUP)) == 2)
        group_message(api, OWNER, text=f"Hey {BOT.upper()}, how are you? 🦓")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 3)
        group_message(api, OWNER, text=f"/help{BOT}")
        group_message(api, OWNER, text=f"/weather{BOT}")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 5)

    scenario(api, agent, body)
    assert [t.text for t in agent.turns] == ["what is a zebra?", "and a horse?", "Hey, how are you? 🦓"]
    assert {t.conversation_id for t in agent.turns} == {f"telegram:{GROUP}"}  # one conversation per group
    help_, unknown = api.texts(GROUP)[3:]
    assert "/reset" in help_ and f"mention {BOT}" in help_ and "admins" in help_
    assert f"ASSISTANT_TELEGRAM_ALLOWED_CHATS) is {GROUP}" in help_
    assert "/help lists" in unknown


def test_a_mention_in_reply_to_someones_media_analyses_that_media(api: FakeBotAPI, media: Path) -> None:
    agent = StubAgent(lambda turn, progress: Reply(text=f"got {len(turn.attachments)}"))
    photo = group_message(api, BOB, photo=media / "images/inet_zebra.jpg", caption="my new pet")
    voice = group_message(api, BOB, voice=media / "audio/voice_note_ru.oga")
    images = ["inet_goldfish.jpg", "inet_school_bus.jpg", "ext_tabby_cat.jpg"]

    async def body() -> None:
        group_message(api, OWNER, text=f"{BOT} what is this?", reply_to=photo)
        await api.wait_for(lambda: len(api.texts(GROUP)) == 1)
        group_message(api, OWNER, text=f"{BOT} what does he say?", reply_to=voice)
        await api.wait_for(lambda: len(api.texts(GROUP)) == 2)
        for index, name in enumerate(images):  # the caption may come with any photo of an album
            group_message(api, OWNER, photo=media / "images" / name, media_group_id="album",
                          caption=f"{BOT} which one is the cat?" if index == 1 else None)
        await api.wait_for(lambda: len(api.texts(GROUP)) == 3)
        group_message(api, OWNER, photo=media / "images/inet_pizza.jpg", caption=f"{BOT} what food?")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 4)

    scenario(api, agent, body)
    about_photo, about_voice, album, captioned = agent.turns
    assert about_photo.text == "what is this?\n\n(In reply to a message from Bob: \u201cmy new pet\u201d)"
    assert agent.files[0] == [("image", f"photo_{photo['message_id']}.jpg", _sha(media / "images/inet_zebra.jpg"))]
    assert api.sent("getFile")[0].params["file_id"] == photo["photo"][-1]["file_id"]
    assert about_voice.text == "what does he say?"
    (heard,) = about_voice.attachments
    assert (heard.kind, heard.forwarded_from) == ("voice", "Bob")  # Bob's words, not the asker's
    assert album.text == "which one is the cat?"
    assert [sha for _, _, sha in agent.files[2]] == [_sha(media / "images" / n) for n in images]
    assert captioned.text == "what food?"
    assert [sha for _, _, sha in agent.files[3]] == [_sha(media / "images/inet_pizza.jpg")]
    assert len(api.downloads) == 6


def test_an_allowed_group_serves_all_its_members_there(api: FakeBotAPI) -> None:
    agent = StubAgent()
    group_message(api, BOB, text=f"{BOT} hello from Bob")
    api.message(BOB, user=make_user(BOB, first_name="Bob"), text="and in private?")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(GROUP) and api.texts(BOB))

    scenario(api, agent, body, telegram_allowed_chats=(GROUP,))
    assert [t.text for t in agent.turns] == ["hello from Bob"]
    (refusal,) = api.texts(BOB)  # the group's members are allowed in the group only
    assert str(BOB) in refusal


def test_a_stranger_mentioning_the_bot_in_a_group_is_told_once(api: FakeBotAPI) -> None:
    agent = StubAgent()
    group_message(api, STRANGER, OTHER_GROUP, text="just chatting")
    group_message(api, STRANGER, OTHER_GROUP, text=f"{BOT} who are you?")
    group_message(api, STRANGER, OTHER_GROUP, text=f"{BOT} hello?")
    group_message(api, STRANGER, OTHER_GROUP, text="/reset")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(OTHER_GROUP))
        group_message(api, OWNER, OTHER_GROUP, text=f"{BOT} I am allowed anywhere")
        await api.wait_for(lambda: len(api.texts(OTHER_GROUP)) == 2)

    scenario(api, agent, body)
    refusal, answer_text = api.texts(OTHER_GROUP)
    assert str(STRANGER) in refusal and str(OTHER_GROUP) in refusal
    assert "ASSISTANT_TELEGRAM_ALLOWED_CHATS" in refusal
    assert answer_text == "You said: <b>I am allowed anywhere</b>"
    assert [t.text for t in agent.turns] == ["I am allowed anywhere"] and agent.resets == []


def test_reset_and_switching_the_model_are_for_a_groups_admins(api: FakeBotAPI) -> None:
    agent = StubAgent()
    admin = 4004
    api.set_status(GROUP, admin, "administrator")
    for text in ("/reset", "/model llama3"):
        group_message(api, BOB, text=text)

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(GROUP)) == 2)
        group_message(api, BOB, text="/cancel")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 3)
        group_message(api, admin, text=f"/reset{BOT}")
        await api.wait_for(lambda: len(api.texts(GROUP)) == 4)

    scenario(api, agent, body, telegram_allowed_chats=(GROUP,))
    texts = api.texts(GROUP)
    assert "only this group's admins can reset" in texts[0]
    assert "only this group's admins can switch" in texts[1]
    assert "no reply in progress" in texts[2]  # /cancel is anyone's
    assert "forgotten" in texts[3] and agent.resets == [f"telegram:{GROUP}"]
    assert {(c.params["user_id"]) for c in api.sent("getChatMember")} == {BOB, admin}


def test_the_bots_mention_is_cut_from_the_text() -> None:
    from telegram import Chat, Message, MessageEntity
    from adapters.telegram.incoming import message_text

    def message(text: str, *mentions: str) -> Message:
        units = lambda part: len(part.encode("utf-16-le")) // 2  # noqa: E731
        entities = [MessageEntity("mention", units(text[:text.index(m)]), units(m)) for m in mentions]
        return Message(1, None, Chat(-1, "group"), text=text, entities=entities)  # type: ignore[arg-type]

    assert message_text(message("@my_bot what is this?", "@my_bot"), "my_bot") == "what is this?"
    assert message_text(message("🦓🦓 @My_Bot, stripes?", "@My_Bot"), "my_bot") == "🦓🦓, stripes?"
    assert message_text(message("ask @my_bot and @other_bot", "@my_bot", "@other_bot"), "my_bot") \
        == "ask and @other_bot"
    assert message_text(message("just text"), "my_bot") == "just text"


def test_allowed_chats_are_group_ids() -> None:
    settings = TelegramSettings.from_env({"ASSISTANT_TELEGRAM_ALLOWED_CHATS": "-1001234567890, -42"})
    assert settings.allowed_chats == (-1001234567890, -42)
    from adapters.telegram import SETTINGS
    from tools.settings import read_settings

    _values, problems = read_settings(SETTINGS, {"ASSISTANT_TELEGRAM_ALLOWED_CHATS": "-42,12345,@group"})
    (problem,) = problems
    assert problem.startswith("ASSISTANT_TELEGRAM_ALLOWED_CHATS='-42,12345,@group'")
    assert "12345, @group" in problem and "negative" in problem


# -- a model per chat ------------------------------------------------------------------------

def test_model_lists_switches_and_is_kept_across_restarts(api: FakeBotAPI, fake_ollama: FakeOllama,
                                                         make_agent) -> None:
    settings = Settings(ollama_host=fake_ollama.url)
    for text in ("/model", "/model nosuch", "/model llama3"):
        api.message(OWNER, text=text)

    async def switch() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 3)

    scenario(api, make_agent(OllamaLLM(settings)), switch)
    listing, unknown, switched = api.texts(OWNER)
    assert listing.startswith("This chat uses <code>llama3.1:8b</code>.")
    assert "• <code>llama3.1:8b</code> (in use): native tool calling" in listing
    assert "• <code>llama3:latest</code>: no native tool calling" in listing
    assert "no model 'nosuch'" in unknown and "<code>ollama pull nosuch</code>" in unknown
    assert switched.startswith("This chat now uses <code>llama3:latest</code>: no native tool calling")

    # After a restart the chat still uses llama3 (learning again that it has no native tools).
    fake_ollama.script += [answer('{"tool_calls": []}'), answer("Hello from llama3.")]
    api.message(OWNER, text="hello")
    api.message(OWNER, text="/model")

    async def later() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 5)

    scenario(api, make_agent(OllamaLLM(settings)), later)
    hello, again = api.texts(OWNER)[3:]
    assert hello == "Hello from llama3."
    assert {request["model"] for request in fake_ollama.chat_requests()} == {"llama3:latest"}
    assert again.startswith("This chat uses <code>llama3:latest</code>.")
    assert "• <code>llama3:latest</code> (in use): no native tool calling (a JSON prompt chooses the tools)" in again


# -- per-chat state stays bounded ------------------------------------------------------------

def test_refused_strangers_are_remembered_within_a_bound() -> None:
    access = Access([str(OWNER)], SQLiteUsernames(open_store(":memory:")), remembered=10)
    strangers = [User(id=5000 + n, first_name="S", is_bot=False) for n in range(100)]
    assert all(access.first_refusal(user, user.id) for user in strangers)
    assert not access.first_refusal(strangers[-10], strangers[-10].id)  # the 10 most recent are kept
    assert not access.first_refusal(strangers[-1], strangers[-1].id)  # a recent one is not told twice
    assert access.first_refusal(strangers[0], strangers[0].id)  # one from long ago may be told again


def test_the_order_of_chats_keeps_nothing_for_idle_chats() -> None:
    bot = TelegramBot(StubAgent(), Settings(), TelegramSettings(token="1:x", allowed_users=(str(OWNER),)))

    async def main() -> None:
        for chat in range(500):
            async with bot.in_order(chat):
                pass

    asyncio.run(main())
    assert bot.session._tails == {} and bot.session._jobs == {}  # the session's line, per busy chat only



# -- voice replies -----------------------------------------------------------------------------

def _voice_of(call) -> tuple[str, int, int]:
    """The codec, rate and channels of a sendVoice upload."""
    import io

    import av

    with av.open(io.BytesIO(call.files["voice"][1])) as container:
        stream = container.streams.audio[0]
        return stream.codec_context.name, stream.rate, stream.channels


def test_a_voice_note_gets_a_voice_reply_after_the_text(api: FakeBotAPI, media: Path, piper_voice: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto (the default): a voice note is answered with the text, then a voice note (OGG/Opus,
    the real Piper voice) while the chat shows "recording voice…"; a text message gets text only;
    /voice always speaks every reply and /voice off none, kept across a restart of the bot."""
    monkeypatch.setenv("ASSISTANT_TTS_VOICES", f"en={piper_voice}")
    agent = StubAgent(lambda turn, progress: Reply(text="I heard a **short** voice note."),
                      memory=Memory(tmp_path / "memory.sqlite3"))
    api.message(OWNER, voice=media / "audio/voice_note_ru.oga")

    async def first() -> None:
        await api.wait_for(lambda: api.sent("sendVoice"), timeout=120)
        api.message(OWNER, text="and now in text")
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2)
        api.message(OWNER, text="/voice always")
        await api.wait_for(lambda: len(api.texts(OWNER)) == 3)

    scenario(api, agent, first, telegram_voice="auto")
    methods = [c.method for c in api.calls if c.params.get("chat_id") == OWNER
               and c.method in ("sendMessage", "sendVoice")]
    assert methods[:3] == ["sendMessage", "sendVoice", "sendMessage"]
    assert _voice_of(api.sent("sendVoice")[0]) == ("opus", 48000, 1)
    assert any(c.params.get("action") == "record_voice" for c in api.sent("sendChatAction"))
    assert "Every reply comes as a voice note" in api.texts(OWNER)[2]

    api.message(OWNER, text="speak to me")

    async def second() -> None:  # a new bot on the same database: the chat's choice is kept
        await api.wait_for(lambda: len(api.sent("sendVoice")) == 2, timeout=120)
        api.message(OWNER, text="/voice off")
        api.message(OWNER, voice=media / "audio/voice_note_ru.oga")
        await api.wait_for(lambda: len(api.texts(OWNER)) == 6)
        await asyncio.sleep(0.5)

    scenario(api, agent, second, telegram_voice="auto")
    assert len(api.sent("sendVoice")) == 2 and "Voice replies are off" in api.texts(OWNER)[4]


def test_no_voice_for_the_language_says_why_and_the_text_stands(api: FakeBotAPI, media: Path,
                                                               piper_voice: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASSISTANT_TTS_VOICES", f"en={piper_voice}")
    agent = StubAgent(lambda turn, progress: Reply(text="Это голосовое сообщение."))
    api.message(OWNER, voice=media / "audio/voice_note_ru.oga")

    async def body() -> None:
        await api.wait_for(lambda: len(api.texts(OWNER)) == 2, timeout=60)

    scenario(api, agent, body, telegram_voice="auto")
    text, why = api.texts(OWNER)
    assert text == "Это голосовое сообщение."
    assert why.startswith("(No voice reply: There is no voice for Russian replies")
    assert not api.sent("sendVoice")


def test_voice_mode_in_a_group_is_for_admins(api: FakeBotAPI) -> None:
    agent = StubAgent()
    group_message(api, OWNER, text="/voice always")

    async def body() -> None:
        await api.wait_for(lambda: api.texts(GROUP))

    scenario(api, agent, body, telegram_allowed_chats=(GROUP,))
    assert api.texts(GROUP) == ["Sorry, only this group's admins can change its voice replies."]
