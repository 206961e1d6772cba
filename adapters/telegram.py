"""The Telegram bot: the same assistant as the REPL, for every allowed Telegram user.

Channel I/O only: an incoming message (or album) becomes one :class:`Turn` with its files
downloaded and registered as attachments; while the turn works, the answer streams into a
message draft (private chats) or one message edited as it grows (groups), with the tools'
progress and the place in the queue; the agent's :class:`Reply` is then sent as Telegram HTML,
split below the message limit, with its annotated photos and videos.

Order, worker threads, cancel, the heavy-job queue and throttling are the session's
(:mod:`assistant.session`); updates are handled concurrently. Downloads are kept with their
attachment ids (see :class:`~assistant.attachments.AttachmentStore`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import re
import secrets
import os
import sqlite3
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

from telegram import Bot, BotCommand, Chat, LinkPreviewOptions, Message, MessageEntity, Update, User
from telegram.constants import ChatAction, ChatMemberStatus, ChatType, ParseMode
from telegram.error import (BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError,
                            TimedOut)
from telegram.warnings import PTBDeprecationWarning
from telegram.ext import (AIORateLimiter, Application, ApplicationBuilder, ApplicationHandlerStop,
                          CommandHandler, ContextTypes, MessageHandler, TypeHandler, filters)
from telegram.request import HTTPXRequest

from assistant.config import MB, Setting, Settings, megabytes, read_settings
from assistant.errors import LLMError, ToolError, short_reason
from assistant.memory import transaction
from assistant.recent import RecentSet
from assistant.session import Session, Throttle, TurnView, ViewState, split_text
from assistant.turns import Reply, Turn, interrupted_notice

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.memory import Memory

log = logging.getLogger("assistant.telegram")

PUBLIC_API = "https://api.telegram.org"
#: The public Bot API serves downloads up to 20 MB; a self-hosted server has no such limit.
PUBLIC_DOWNLOAD_LIMIT = 20 * MB
#: ... and takes uploads from bots up to 50 MB.
PUBLIC_UPLOAD_LIMIT = 50 * MB
#: Telegram's limit on one text message.
MESSAGE_LIMIT = 4096
#: Refused users (in a chat) remembered as told (strangers are many; the least recent are forgotten).
REFUSALS_REMEMBERED = 4096

COMMANDS = (
    ("start", "what this bot does"),
    ("help", "how to use it"),
    ("reset", "forget this conversation"),
    ("cancel", "stop the reply in progress"),
    ("tools", "the tools I can use"),
    ("model", "show or switch the language model"),
)

HELP_TEXT = """\
I'm a local assistant. Send me:
• text — ask anything, or ask for the mood (sentiment) of a text;
• a photo (or an album) — I say what's in it and can find objects;
• a voice note — I answer what you say (and say what else I hear);
• audio — I say what sounds I hear, and what is said in it;
• a video — I find the objects in it.
Add a caption to say what you want to know about a file.

Commands: /cancel stops the reply in progress, /reset forgets this conversation, /tools lists
what I can use, /model shows or switches the language model of this chat, /help shows this."""

GROUP_HELP = """\
In this group I answer when you mention @{username}, reply to one of my messages, or send a
command. Mention me in reply to a photo, voice note, audio or video to ask about it. The group
is one conversation; /reset and /model NAME are for its admins. This group's chat id (for
ASSISTANT_TELEGRAM_ALLOWED_CHATS) is {chat_id}."""

#: Documents are downloaded only when their MIME type says they may be media or text.
_DOCUMENT_PREFIXES = ("image/", "audio/", "video/", "text/")
_UNKNOWN_MIMES = ("", "application/octet-stream")


@dataclass(frozen=True)
class BotOptions:
    """Timing and capacity knobs (the defaults suit a small machine; tests shorten them)."""

    album_wait: float = 1.0  # an album is complete this long after its last message
    heavy_jobs: int = 1  # turns with media analysed at the same time
    draft_interval: float = 0.75  # private chats: at most one draft update this often
    draft_refresh: float = 20.0  # ... and the same draft again this often (drafts last ~30 s)
    edit_interval: float = 3.5  # groups: at most one edit this often (~20 requests a minute)
    action_interval: float = 4.5  # a chat action shows for ~5 s; renew it this often
    concurrent_updates: int = 64
    max_retries: int = 3  # retries after Telegram's flood limit (429 retry_after)
    outbox_retry: float = 2.0  # a reply Telegram did not take is tried again after this long,
    outbox_retry_max: float = 30.0  # ... doubled after each failure up to this


def _entries(text: str) -> tuple[str, ...]:
    return tuple(u for u in text.replace(";", ",").replace(" ", ",").split(",") if u)


def _chats(text: str) -> tuple[int, ...]:
    entries = _entries(text)
    wrong = [entry for entry in entries if not re.fullmatch(r"-\d+", entry)]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not a group's chat id")
    return tuple(int(entry) for entry in entries)


#: This channel's own settings (the core's are in ``assistant.config``).
SETTINGS = (
    Setting("TELEGRAM_BOT_TOKEN", None),
    Setting("TELEGRAM_API_BASE_URL", PUBLIC_API, check=lambda url: url.rstrip("/")),
    Setting("ASSISTANT_TELEGRAM_ALLOWED_USERS", (), check=_entries,
            allowed="user ids and @usernames separated by commas"),
    Setting("ASSISTANT_TELEGRAM_ALLOWED_CHATS", (), check=_chats,
            allowed="group chat ids (negative numbers such as -1001234567890) separated by commas"),
)


@dataclass(frozen=True)
class TelegramSettings:
    """What the bot reads besides the core settings."""

    token: str | None = None
    api_base_url: str = PUBLIC_API
    allowed_users: tuple[str, ...] = ()
    allowed_chats: tuple[int, ...] = ()  # groups whose members may all use the bot there

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelegramSettings:
        values, _problems = read_settings(SETTINGS, os.environ if env is None else env)
        return cls(*(values[setting.variable] for setting in SETTINGS))


# ---------------------------------------------------------------------------------------------
# Entry point

def run(args: argparse.Namespace, settings: Settings, telegram: TelegramSettings | None = None) -> int:
    """`assistant telegram`: check the configuration, build the agent, poll until stopped."""
    telegram = telegram or TelegramSettings.from_env()
    if not telegram.token:
        print("assistant telegram: TELEGRAM_BOT_TOKEN is not set. Create a bot with @BotFather "
              "in Telegram and set TELEGRAM_BOT_TOKEN to the token it gives you.", file=sys.stderr)
        return 2
    allow_all = bool(getattr(args, "allow_all", False))
    if not telegram.allowed_users and not telegram.allowed_chats and not allow_all:
        print("assistant telegram: no allowlist. Set ASSISTANT_TELEGRAM_ALLOWED_USERS to the "
              "Telegram user ids and/or @usernames allowed to use the bot (for example "
              "ASSISTANT_TELEGRAM_ALLOWED_USERS=123456789,@alice), and/or "
              "ASSISTANT_TELEGRAM_ALLOWED_CHATS to the ids of groups whose members may all use "
              "it, or pass --allow-all to serve everyone.", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO, and the URL contains the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # python-telegram-bot's network retry loop logs tracebacks (one even shows the token);
    # its one-line messages say enough.
    logging.getLogger("telegram.ext").addFilter(_without_traceback)

    from assistant.agent import build_agent

    try:
        agent = build_agent(settings)
    except (OSError, sqlite3.Error) as exc:
        print(f"assistant telegram: cannot open the database {settings.db_path} "
              f"({short_reason(exc)}); set ASSISTANT_DB to a writable path.", file=sys.stderr)
        return 2
    note = agent.warm_up()
    if note:
        log.warning("%s", note)
    application = build_application(settings, agent, telegram, allow_all=allow_all)
    log.info("Telegram bot polling %s (Ctrl+C stops it)", telegram.api_base_url)
    return serve(application, telegram)


def serve(application: Application, telegram: TelegramSettings) -> int:
    """Poll until stopped: 0 after Ctrl+C; 2 when Telegram rejects the token (at start, or
    revoked while running: a supervisor can tell and alert); 1 when the Bot API cannot be
    reached at start."""
    try:
        application.run_polling(allowed_updates=[Update.MESSAGE])
    except InvalidToken:
        if not application.bot_data.get(TOKEN_REJECTED):  # at start
            print("assistant telegram: Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather.",
                  file=sys.stderr)
            return 2
    except NetworkError as exc:
        print(f"assistant telegram: cannot reach the Bot API at {telegram.api_base_url} "
              f"({exc}); check the network or TELEGRAM_API_BASE_URL.", file=sys.stderr)
        return 1
    if application.bot_data.get(TOKEN_REJECTED):
        print("assistant telegram: Telegram rejected TELEGRAM_BOT_TOKEN while the bot was running "
              "(401 Unauthorized): the token was revoked or regenerated in @BotFather. Set the "
              "current token and start the bot again; replies not yet delivered are sent then.",
              file=sys.stderr)
        return 2
    return 0


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = None
    record.exc_text = None
    return True


def build_application(settings: Settings, agent: Agent, telegram: TelegramSettings, *,
                      allow_all: bool = False, options: BotOptions = BotOptions()) -> Application:
    """The python-telegram-bot Application with every handler of the bot."""
    api = telegram.api_base_url.rstrip("/")
    bot = TelegramBot(agent, settings, telegram, allow_all=allow_all, options=options)
    application = (
        ApplicationBuilder()
        .token(telegram.token or "")
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .concurrent_updates(options.concurrent_updates)
        .rate_limiter(RateLimiter(max_retries=options.max_retries))
        .request(Request(bot.token_rejected, connection_pool_size=256, read_timeout=30,
                         media_write_timeout=120))
        .get_updates_request(Request(bot.token_rejected, connection_pool_size=1))
        .post_init(bot.post_init)
        .post_stop(bot.post_stop)
        .build()
    )
    application.add_handler(TypeHandler(Update, bot.gate), group=-1)
    application.add_handler(CommandHandler("start", bot.on_start))
    application.add_handler(CommandHandler("help", bot.on_help))
    application.add_handler(CommandHandler("reset", bot.on_reset))
    application.add_handler(CommandHandler("cancel", bot.on_cancel))
    application.add_handler(CommandHandler("tools", bot.on_tools))
    application.add_handler(CommandHandler("model", bot.on_model))
    application.add_handler(MessageHandler(filters.COMMAND, bot.on_unknown_command))
    application.add_handler(MessageHandler(filters.UpdateType.MESSAGE & ~filters.COMMAND, bot.on_message))
    application.add_error_handler(bot.on_error)
    return application


# ---------------------------------------------------------------------------------------------
# The bot

@dataclass(frozen=True)
class IncomingFile:
    """A file in a Telegram message, before it is downloaded."""

    file_id: str
    size: int | None
    name: str
    refusal: str | None = None  # why it is not taken (a document of an unsupported type)
    voice: bool = False  # a voice note: its words are the sender's message
    forwarded_from: str | None = None  # whose message it is, when forwarded


class TelegramBot:
    """Handlers and the state they share: access, the session, albums."""

    def __init__(self, agent: Agent, settings: Settings, telegram: TelegramSettings, *,
                 allow_all: bool = False, options: BotOptions = BotOptions()) -> None:
        self.agent = agent
        self.options = options
        self.access = Access(telegram.allowed_users, agent.memory, allowed_chats=telegram.allowed_chats,
                             allow_all=allow_all)
        self.download_limit = download_limit(settings, telegram)
        self.public_api = telegram.api_base_url.rstrip("/") == PUBLIC_API
        self.session = Session(agent, heavy_jobs=options.heavy_jobs)
        self.outbox = Outbox(agent.memory.path)
        self._albums: dict[tuple[int, str], Album] = {}
        self._application: Application | None = None
        self._delivery: asyncio.Task | None = None  # sends what the outbox keeps

    # -- lifecycle ------------------------------------------------------------------------------

    async def post_init(self, application: Application) -> None:
        self._application = application
        await application.bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS])
        log.info("Serving as @%s", application.bot.username)
        if self.outbox.chats():  # kept by an earlier run
            self._start_delivery()
        for conversation in self.agent.memory.open_conversations(CONVERSATION_PREFIX):
            for text in self.agent.memory.recover_interrupted(conversation):
                chat_id = int(conversation.rpartition(":")[2])
                with contextlib.suppress(TelegramError):
                    await application.bot.send_message(chat_id, interrupted_notice(text))

    async def post_stop(self, application: Application) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery

    def token_rejected(self) -> None:
        """Telegram answered 401 (the token was revoked or regenerated): nothing the bot does
        can work any more, so it stops (:func:`serve` then exits with status 2)."""
        application = self._application
        if application is None or application.bot_data.get(TOKEN_REJECTED):
            return
        application.bot_data[TOKEN_REJECTED] = True
        log.error("Telegram rejected the bot's token (401 Unauthorized); stopping")
        if application.running:
            application.stop_running()

    # -- access ---------------------------------------------------------------------------------

    async def gate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Runs before every handler: only messages addressed to the bot go on (in a group, the
        others are chatter, silently ignored), and only from allowed users or chats; strangers
        get one polite reply and nothing else. A group's album is judged once it is complete
        (:meth:`on_message`): its caption may come with any of its messages."""
        message = update.message
        if message is not None and message.media_group_id and message.chat.type != ChatType.PRIVATE:
            return
        if message is None or not await self._admitted(context, [message]):
            raise ApplicationHandlerStop

    async def _admitted(self, context: ContextTypes.DEFAULT_TYPE, messages: list[Message]) -> bool:
        """Whether the bot answers ``messages`` (one message, or an album): one of them is
        addressed to the bot, by someone allowed (a stranger is told once)."""
        message = next((m for m in messages if addressed(m, context.bot)), None)
        if message is None:
            return False
        user, chat = message.from_user, message.chat
        if user is None:
            return False
        if self.access.allows(user, chat.id):
            return True
        if self.access.first_refusal(user, chat.id):
            log.info("Refused Telegram user %s in chat %s (not in ASSISTANT_TELEGRAM_ALLOWED_USERS "
                     "or _CHATS)", user.id, chat.id)
            if chat.type == ChatType.PRIVATE:
                ids, add = f"Your Telegram user id is {user.id}", "it to ASSISTANT_TELEGRAM_ALLOWED_USERS"
            else:
                ids = f"Your Telegram user id is {user.id}, this group's id is {chat.id}"
                add = ("yours to ASSISTANT_TELEGRAM_ALLOWED_USERS, or the group's to "
                       "ASSISTANT_TELEGRAM_ALLOWED_CHATS,")
            await context.bot.send_message(chat.id, f"Sorry, this is a private assistant. {ids}. If you "
                                           f"know the owner, ask them to add {add} and restart the bot.")
        return False

    async def _by_admin(self, context: ContextTypes.DEFAULT_TYPE, message: Message) -> bool:
        """Whether ``message`` comes from an admin of its group (anyone, in a private chat)."""
        chat = message.chat
        if chat.type == ChatType.PRIVATE:
            return True
        if message.sender_chat is not None and message.sender_chat.id == chat.id:
            return True  # an anonymous admin, writing as the group
        try:
            member = await context.bot.get_chat_member(chat.id, message.from_user.id)
        except TelegramError as exc:
            log.warning("Could not ask Telegram whether user %s is an admin of chat %s (%s)",
                        message.from_user.id, chat.id, exc)
            return False
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    # -- commands -------------------------------------------------------------------------------

    async def on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async with self._in_order(update.effective_chat.id):
            name = update.effective_user.first_name if update.effective_user else "there"
            await self._send_text(context, update.effective_chat.id,
                                  f"Hi {name}! {self._help(update.effective_chat, context.bot)}", plain=True)

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async with self._in_order(update.effective_chat.id):
            limit = f"Files up to {megabytes(self.download_limit)}."
            await self._send_text(context, update.effective_chat.id,
                                  f"{self._help(update.effective_chat, context.bot)}\n\n{limit}", plain=True)

    @staticmethod
    def _help(chat: Chat, bot: Bot) -> str:
        if chat.type == ChatType.PRIVATE:
            return HELP_TEXT
        return f"{HELP_TEXT}\n\n{GROUP_HELP.format(username=bot.username, chat_id=chat.id)}"

    async def on_reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat_id = update.effective_chat.id
        async with self._in_order(chat_id):
            if not await self._by_admin(context, update.message):
                await self._send_text(context, chat_id, "Sorry, only this group's admins can reset "
                                      "its conversation.", plain=True)
                return
            await asyncio.to_thread(self.agent.reset, conversation_id(chat_id))
            await self._send_text(context, chat_id, "Done: I've forgotten this conversation.", plain=True)

    async def on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Stops the reply in progress in this chat (without waiting in the chat's line, which
        that reply holds)."""
        chat_id = update.effective_chat.id
        if not self.session.cancel(conversation_id(chat_id)):
            await self._send_text(context, chat_id, "There is no reply in progress to cancel.", plain=True)

    async def on_tools(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async with self._in_order(update.effective_chat.id):
            lines = [f"• **{tool.name}**: {_first_sentence(tool.description)}" for tool in self.agent.tools]
            await self._send_text(context, update.effective_chat.id,
                                  "I can use these tools:\n" + "\n".join(lines))

    async def on_model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/model: this chat's model and the models Ollama has; /model NAME switches to NAME."""
        chat_id = update.effective_chat.id
        conversation = conversation_id(chat_id)
        name = " ".join(context.args or ()).strip()
        async with self._in_order(chat_id):
            if name and not await self._by_admin(context, update.message):
                await self._send_text(context, chat_id, "Sorry, only this group's admins can switch "
                                      "its model; /model shows which one it uses.", plain=True)
                return
            try:
                if name:
                    chosen = await asyncio.to_thread(self.agent.set_model, conversation, name)
                    text = f"This chat now uses `{chosen.name}`: {chosen.describe()}."
                else:
                    text = await asyncio.to_thread(self._models_text, conversation)
            except LLMError as exc:
                text = str(exc)
            await self._send_text(context, chat_id, text)

    def _models_text(self, conversation: str) -> str:
        """What /model says: the chat's model, then the models Ollama has (blocking)."""
        current = self.agent.model_of(conversation)
        lines = [f"This chat uses `{current}`."]
        try:
            models = self.agent.models()
        except LLMError as exc:
            return f"{lines[0]} {exc}"
        lines += ["", "Models in Ollama:"]
        lines += [f"- `{model.name}`{' (in use)' if model.name == current else ''}: {model.describe()}"
                  for model in models]
        lines += ["", "/model NAME switches this chat to another one."]
        return "\n".join(lines)

    async def on_unknown_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if command_target(update.message) == "" and update.effective_chat.type != ChatType.PRIVATE:
            return  # a bare /command in a group may be another bot's
        async with self._in_order(update.effective_chat.id):
            await self._send_text(context, update.effective_chat.id,
                                  "I don't know that command; /help lists what I understand.", plain=True)

    # -- messages -------------------------------------------------------------------------------

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        chat_id = message.chat_id
        if message.media_group_id:
            key = (chat_id, message.media_group_id)
            album = self._albums.get(key)
            if album is not None:  # the first message of the album answers for all of them
                album.add(message)
                return
            album = self._albums[key] = Album(message)
            async with self._in_order(chat_id):
                await album.complete(self.options.album_wait)
                self._albums.pop(key, None)
                if await self._admitted(context, album.messages):  # not a group's chatter
                    await self._answer(context, chat_id, album.messages)
            return
        async with self._in_order(chat_id):
            await self._answer(context, chat_id, [message])

    async def _answer(self, context: ContextTypes.DEFAULT_TYPE, chat_id: int, messages: list[Message]) -> None:
        """One turn: the text and files of ``messages`` (and of the message they reply to, when
        it is not the bot's), answered with the agent's reply."""
        bot = context.bot
        text = "\n\n".join(filter(None, (message_text(m, bot.username) for m in messages)))
        files = [f for f in map(incoming_file, messages) if f is not None]
        replied = replied_to(messages, bot.id)
        if replied is not None:
            own = same_sender(replied, messages[0])
            text = "\n\n".join(filter(None, (text, quoted(replied, own))))
            file = incoming_file(replied)
            if file is not None and file.voice and not own and file.forwarded_from is None:
                file = replace(file, forwarded_from=sender_name(replied))  # someone else's words
            files = ([file] if file is not None else []) + files
        refusals = [f.refusal for f in files if f.refusal]
        if refusals:
            await self._send_text(context, chat_id, "\n".join(refusals), plain=True)
            return
        if not text and not files:
            if any(m.text or m.caption for m in messages):  # only "@bot"
                await self._send_text(context, chat_id, f"Yes? Write your question after @{bot.username}, "
                                      "or mention me in reply to a photo, voice note or video to ask "
                                      "about it.", plain=True)
                return
            await self._send_text(context, chat_id, "I can read text, photos, audio, voice notes "
                                  "and video; this kind of message I can't use.", plain=True)
            return
        too_big = [f for f in files if f.size is not None and f.size > self.download_limit]
        if too_big:
            await self._send_text(context, chat_id, self._too_big_message(too_big), plain=True)
            return

        conversation = conversation_id(chat_id)
        live = live_reply(bot, messages[0].chat, self.options)
        turn = Turn(conversation, text)
        if files:
            await live.action(ChatAction.TYPING)  # downloading takes a moment too
            store = self.agent.attachments(conversation)
            for incoming in files:
                try:
                    path = await self._download(context, incoming, store.new_path(incoming.name))
                except NotDownloaded as refusal:
                    await self._send_text(context, chat_id, str(refusal), plain=True)
                    return
                try:
                    turn.attachments.append(store.register(path, name=incoming.name, voice=incoming.voice,
                                                           forwarded_from=incoming.forwarded_from))
                except ToolError as exc:
                    await self._send_text(context, chat_id, str(exc), plain=True)
                    return
        reply = await self._respond(context, turn, live)
        await self._send_reply(context, chat_id, reply, live)

    async def _download(self, context: ContextTypes.DEFAULT_TYPE, incoming: IncomingFile,
                        destination: Path) -> Path:
        """The file saved at ``destination``; :class:`NotDownloaded` (saying why, for the
        sender) when Telegram says it is too big, or no longer has it."""
        try:
            remote = await context.bot.get_file(incoming.file_id)
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise NotDownloaded(self._too_big_message([incoming])) from exc
            if "file_id" in str(exc).lower() or "unavailable" in str(exc).lower():
                log.warning("Telegram no longer has %s (getFile: %s)", incoming.name, exc)
                raise NotDownloaded(_gone_message(incoming)) from exc
            raise
        if remote.file_size is not None and remote.file_size > self.download_limit:
            raise NotDownloaded(self._too_big_message([incoming]))
        try:
            return await remote.download_to_drive(destination, read_timeout=120)
        except InvalidToken as exc:  # python-telegram-bot's name for any 404 (and 401) answer
            if "not found" not in str(exc).lower():
                raise
            log.warning("Downloading %s from Telegram answered 404 Not Found: the file is gone from "
                        "Telegram's servers (expired or deleted)", incoming.name)
            raise NotDownloaded(_gone_message(incoming)) from exc

    def _too_big_message(self, files: Iterable[IncomingFile]) -> str:
        sizes = ", ".join(f"{f.name} is {megabytes(f.size)}" if f.size else f.name for f in files)
        message = f"That file is too large for me ({sizes}); I take files up to " \
                  f"{megabytes(self.download_limit)}."
        if self.public_api and self.download_limit == PUBLIC_DOWNLOAD_LIMIT:
            message += (" Telegram lets bots download at most 20 MB; the bot's owner can lift that "
                        "with a self-hosted Bot API server (TELEGRAM_API_BASE_URL).")
        return message

    async def _respond(self, context: ContextTypes.DEFAULT_TYPE, turn: Turn, live: LiveReply) -> Reply:
        """The agent's reply from the session's worker thread, while ``live`` shows how it goes.
        When the bot stops (Ctrl+C), the turn is cancelled rather than waited for."""
        view = TurnView()
        await live.action(ChatAction.TYPING)
        ticker = asyncio.create_task(live.follow(
            view, stopping=lambda: not context.application.running,
            stop=lambda: self.session.cancel(turn.conversation_id)))
        try:  # the handler holds the chat's order
            return await self.session.respond(turn, view)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _send_reply(self, context: ContextTypes.DEFAULT_TYPE, chat_id: int, reply: Reply,
                          live: LiveReply) -> None:
        if reply.notes:  # for the adapter, not the user (the text already says what matters)
            log.info("Reply notes for chat %s: %s", chat_id, "; ".join(reply.notes))
        text = reply_markdown(reply.text, reply.results, reply.heard)
        chunks = render_markdown(text) if text else []
        if not chunks and not reply.media:
            chunks = [Chunk(None, "(I have no answer to that.)")]
        if not self.outbox.holds(chat_id):  # else the streamed message would jump the line
            chunks = await live.settle(chunks)  # a group's streamed message becomes the first
        await self._deliver(context.bot, chat_id, [*chunks, *(Media(str(path)) for path in reply.media)])

    async def _send_text(self, context: ContextTypes.DEFAULT_TYPE, chat_id: int, text: str,
                         *, plain: bool = False) -> None:
        """``text`` (Markdown unless ``plain``) as one or more messages below the limit."""
        if plain:
            chunks = [Chunk(None, part) for part in split_text(text, MESSAGE_LIMIT)]
        else:
            chunks = render_markdown(text)
        await self._deliver(context.bot, chat_id, chunks)

    async def _deliver(self, bot: Bot, chat_id: int, items: Sequence[Outgoing]) -> None:
        """Send ``items`` in order. What Telegram does not take now (the Bot API unreachable,
        the token refused) is kept in the outbox, with everything after it for the chat, and
        sent when Telegram takes messages again."""
        if self.outbox.holds(chat_id):  # earlier messages still wait: these go after them
            self._keep(chat_id, items, "earlier replies are still waiting")
            return
        for index, item in enumerate(items):
            try:
                await self._send_item(bot, chat_id, item)
            except (NetworkError, InvalidToken) as exc:
                if isinstance(exc, BadRequest):
                    raise
                self._keep(chat_id, items[index:], f"{type(exc).__name__}: {exc}")
                return

    def _keep(self, chat_id: int, items: Sequence[Outgoing], why: str) -> None:
        self.outbox.add(chat_id, items)
        log.warning("%d message(s) to chat %s kept in the outbox (%s); they are sent when Telegram "
                    "takes messages again", len(items), chat_id, why)
        self._start_delivery()

    def _start_delivery(self) -> None:
        if self._application is not None and (self._delivery is None or self._delivery.done()):
            self._delivery = asyncio.create_task(self._deliver_kept(self._application.bot))

    async def _deliver_kept(self, bot: Bot) -> None:
        """Send what the outbox keeps, chat by chat in order, retrying with back-off until it is
        empty."""
        delay = self.options.outbox_retry
        while chats := self.outbox.chats():
            await asyncio.sleep(delay)
            try:
                for chat_id in chats:
                    for item_id, item in self.outbox.kept(chat_id):
                        try:
                            await self._send_item(bot, chat_id, item, attempts=1)
                        except (BadRequest, Forbidden) as exc:  # it can never be delivered
                            log.warning("A kept message to chat %s was refused (%s); dropped", chat_id, exc)
                        self.outbox.remove(item_id)
                log.info("Delivered the messages kept while Telegram was unreachable")
                delay = self.options.outbox_retry
            except (NetworkError, InvalidToken) as exc:
                delay = min(delay * 2, self.options.outbox_retry_max)
                log.info("Telegram still does not take messages (%s); next try in %.0f s", exc, delay)

    async def _send_item(self, bot: Bot, chat_id: int, item: Outgoing, *, attempts: int = 3) -> None:
        if isinstance(item, Media):
            await self._send_media(bot, chat_id, Path(item.path))
        else:
            await self._send_chunk(bot, chat_id, item, attempts=attempts)

    async def _send_chunk(self, bot: Bot, chat_id: int, chunk: Chunk, *, attempts: int = 3) -> None:
        """One message: as HTML, or as plain text if it has no HTML or Telegram refuses it."""
        if chunk.html is not None:
            try:
                await _retry(bot.send_message, chat_id, chunk.html, parse_mode=ParseMode.HTML,
                             link_preview_options=_NO_PREVIEW, attempts=attempts)
                return
            except BadRequest as exc:  # Telegram could not parse it: say it plainly instead
                log.warning("HTML reply refused (%s); sending it as plain text", exc)
        for part in split_text(chunk.plain, MESSAGE_LIMIT):
            await _retry(bot.send_message, chat_id, part, attempts=attempts)

    async def _send_media(self, bot: Bot, chat_id: int, path: Path) -> None:
        """An annotated photo or video; as a document if Telegram refuses it as media."""
        if not path.is_file():
            log.warning("Reply media %s does not exist; skipped", path)
            return
        size = path.stat().st_size
        if self.public_api and size > PUBLIC_UPLOAD_LIMIT:
            await self._send_chunk(bot, chat_id, Chunk(None, f"The annotated {path.name} is "
                                   f"{megabytes(size)}, more than Telegram lets a bot send (50 MB)."))
            return
        video = path.suffix.lower() in (".mp4", ".mov", ".webm", ".mkv")
        action = ChatAction.UPLOAD_VIDEO if video else ChatAction.UPLOAD_PHOTO
        with contextlib.suppress(TelegramError):
            await bot.send_chat_action(chat_id, action)
        try:
            with path.open("rb") as handle:
                if video:
                    await bot.send_video(chat_id, handle, filename=path.name, supports_streaming=True)
                else:
                    await bot.send_photo(chat_id, handle, filename=path.name)
        except BadRequest as exc:  # too large for a photo, unusual dimensions, ...
            log.warning("Sending %s as media failed (%s); sending it as a document", path.name, exc)
            with path.open("rb") as handle:
                await bot.send_document(chat_id, handle, filename=path.name)

    # -- errors ---------------------------------------------------------------------------------

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log with an error id; tell the user that id in a short apology."""
        error_id = secrets.token_hex(4)
        error = context.error
        if not isinstance(update, Update):  # fetching updates failed: python-telegram-bot retries
            log.warning("Telegram error %s: %s: %s", error_id, type(error).__name__, error)
            return
        log.error("Error %s while handling update %s", error_id, update.update_id, exc_info=error)
        if update.effective_chat is None or isinstance(error, Forbidden):
            return
        try:
            await context.bot.send_message(
                update.effective_chat.id,
                f"Sorry, something went wrong on my side (error id {error_id}). Please try again.")
        except TelegramError as exc:
            log.warning("Could not send the apology for error %s: %s", error_id, exc)

    # -- helpers --------------------------------------------------------------------------------

    def _in_order(self, chat_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        """The chat's messages and commands, one at a time in the order they came."""
        return self.session.ordered(conversation_id(chat_id))


#: What every Telegram conversation id starts with (then the chat id).
CONVERSATION_PREFIX = "telegram:"
#: ``application.bot_data`` key: set when Telegram rejected the token while the bot ran.
TOKEN_REJECTED = "token_rejected"


class NotDownloaded(Exception):
    """A file the bot could not download; the message says why, for the sender."""


def _gone_message(incoming: IncomingFile) -> str:
    return (f"I couldn't get {incoming.name} from Telegram: the file is no longer available there "
            "(expired or deleted). Please send it again.")


class Request(HTTPXRequest):
    """python-telegram-bot's HTTP client, telling ``on_unauthorized`` when the Bot API answers
    401 (python-telegram-bot's polling then only logs "Invalid token" and stops polling)."""

    def __init__(self, on_unauthorized: Callable[[], None], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_unauthorized = on_unauthorized

    async def do_request(self, *args: object, **kwargs: object) -> tuple[int, bytes]:
        code, payload = await super().do_request(*args, **kwargs)  # type: ignore[arg-type]
        if code == 401:
            self.on_unauthorized()
        return code, payload


@dataclass(frozen=True)
class Media:
    """A photo or video to send (its path)."""

    path: str


#: The channel's own tables in the assistant's database, one step per version (the version is
#: kept in ``telegram_schema``, apart from the core's ``user_version``). Append; never change a
#: step that has shipped.
STORE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Messages Telegram did not take (unreachable, token refused), in order per chat.
    ("""CREATE TABLE telegram_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            chat_id INTEGER NOT NULL,
            media TEXT,
            html TEXT,
            plain TEXT NOT NULL,
            created REAL NOT NULL)""",),
)


def migrate_store(db: sqlite3.Connection) -> None:
    """Bring the channel's tables up to :data:`STORE_MIGRATIONS` (safe with several processes)."""
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS telegram_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM telegram_schema").fetchone()
        version = row[0] if row else 0
        for step in STORE_MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute("DELETE FROM telegram_schema")
        db.execute("INSERT INTO telegram_schema (version) VALUES (?)", (max(version, len(STORE_MIGRATIONS)),))


class Outbox:
    """Messages Telegram did not take, kept in the database (a restart keeps them) until they
    are delivered, in order per chat."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        migrate_store(self._db)

    def add(self, chat_id: int, items: Iterable[Outgoing]) -> None:
        with transaction(self._db):
            for item in items:
                media, html_text, plain = ((item.path, None, "") if isinstance(item, Media)
                                           else (None, item.html, item.plain))
                self._db.execute("INSERT INTO telegram_outbox (chat_id, media, html, plain, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (chat_id, media, html_text, plain, time.time()))

    def holds(self, chat_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM telegram_outbox WHERE chat_id = ? LIMIT 1",
                                (chat_id,)).fetchone() is not None

    def chats(self) -> list[int]:
        """Chats with kept messages, the longest waiting first."""
        rows = self._db.execute("SELECT chat_id FROM telegram_outbox GROUP BY chat_id ORDER BY MIN(id)")
        return [row[0] for row in rows]

    def kept(self, chat_id: int) -> list[tuple[int, Outgoing]]:
        """The chat's kept messages (with their ids for :meth:`remove`), oldest first."""
        rows = self._db.execute("SELECT id, media, html, plain FROM telegram_outbox WHERE chat_id = ? "
                                "ORDER BY id", (chat_id,)).fetchall()
        return [(item_id, Media(media) if media is not None else Chunk(html_text, plain))
                for item_id, media, html_text, plain in rows]

    def remove(self, item_id: int) -> None:
        self._db.execute("DELETE FROM telegram_outbox WHERE id = ?", (item_id,))


def conversation_id(chat_id: int) -> str:
    return f"{CONVERSATION_PREFIX}{chat_id}"


def addressed(message: Message, bot: Bot) -> bool:
    """Whether ``message`` is for the bot: everything in a private chat; in a group, a command
    (``/help``, ``/help@thisbot``, not ``/help@otherbot``), a reply to one of the bot's
    messages, or a message whose text or caption mentions ``@thisbot``."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    target = command_target(message)
    if target is not None:
        return target in ("", bot.username.lower())
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
        return True
    return bool(_mentions(message, bot.username))


def command_target(message: Message) -> str | None:
    """The bot a command names, lower-case (``""`` for a bare ``/help``); None: no command."""
    entities = message.entities
    if not message.text or not entities or entities[0].type != MessageEntity.BOT_COMMAND \
            or entities[0].offset != 0:
        return None
    return message.parse_entity(entities[0]).partition("@")[2].lower()


def _mentions(message: Message, username: str) -> list[MessageEntity]:
    """The entities of ``message``'s text or caption that mention ``@username``."""
    parsed = (message.parse_entities([MessageEntity.MENTION]) if message.text
              else message.parse_caption_entities([MessageEntity.MENTION]))
    return sorted((entity for entity, text in parsed.items() if text[1:].lower() == username.lower()),
                  key=lambda entity: entity.offset)


def message_text(message: Message, username: str) -> str:
    """The text or caption of ``message`` without its mentions of ``@username`` (the agent
    needs no "@bot," before the question)."""
    text = message.text or message.caption or ""
    mentions = _mentions(message, username)
    if not mentions:
        return text.strip()
    units = text.encode("utf-16-le")  # entity offsets count UTF-16 code units
    bounds = [0, *(b for e in mentions for b in (e.offset, e.offset + e.length)), len(units) // 2]
    pieces = [units[start * 2:end * 2].decode("utf-16-le") for start, end in zip(bounds[::2], bounds[1::2])]
    return reduce(_join, pieces).strip()


def _join(left: str, right: str) -> str:
    """Two pieces of a text a mention was cut from, spaced as if it had never been there."""
    left, right = left.rstrip(" "), right.lstrip(" ")
    if not left:  # "@bot, what is this?"
        return right.lstrip(",:; ")
    if not right or right[0] in ",.:;!?\n":
        return left + right
    return f"{left} {right}"


def replied_to(messages: list[Message], bot_id: int) -> Message | None:
    """The message that ``messages`` reply to, unless it is the bot's (the conversation has it)."""
    for message in messages:
        replied = message.reply_to_message
        if replied is not None and not (replied.from_user is not None and replied.from_user.id == bot_id):
            return replied
    return None


def quoted(replied: Message, own: bool) -> str | None:
    """What a replied-to message (``own``: the asker's) says, for the agent: in a group, the
    person asking may be talking about a message the bot never saw."""
    words = (replied.text or replied.caption or "").strip()
    if not words:
        return None
    if own:
        return f"(In reply to my earlier message: \u201c{words}\u201d)"
    return f"(In reply to a message from {sender_name(replied)}: \u201c{words}\u201d)"


def same_sender(first: Message, second: Message) -> bool:
    """Whether the same person wrote both messages."""
    return first.from_user is not None and second.from_user is not None \
        and first.from_user.id == second.from_user.id


def sender_name(message: Message) -> str:
    """Who wrote ``message``, as the agent is told (the original author of a forwarded one)."""
    return forwarded_from(message) or (message.from_user.full_name if message.from_user else None) \
        or (message.sender_chat.title if message.sender_chat else None) or "someone"


def download_limit(settings: Settings, telegram: TelegramSettings) -> int:
    """Bytes the bot downloads at most: ASSISTANT_MAX_FILE_MB, and 20 MB on the public Bot API."""
    limit = settings.max_file_bytes
    if telegram.api_base_url.rstrip("/") == PUBLIC_API:
        limit = min(limit, PUBLIC_DOWNLOAD_LIMIT)
    return limit


def incoming_file(message: Message) -> IncomingFile | None:
    """The file a message carries (the largest photo size), or None for text and unknown kinds."""
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return IncomingFile(largest.file_id, largest.file_size, f"photo_{message.message_id}.jpg")
    named = ((message.audio, "audio"), (message.voice, "voice.oga"), (message.video, "video.mp4"),
             (message.video_note, "video_note.mp4"), (message.animation, "animation.mp4"))
    for media, default in named:
        if media is not None:
            return IncomingFile(media.file_id, media.file_size,
                                _safe_name(getattr(media, "file_name", None) or default),
                                voice=media is message.voice, forwarded_from=forwarded_from(message))
    document = message.document
    if document is None:
        return None
    mime = (document.mime_type or "").lower()
    name = _safe_name(document.file_name or "document")
    refusal = None
    if not (mime.startswith(_DOCUMENT_PREFIXES) or mime in _UNKNOWN_MIMES):
        refusal = f"I can't read {name} ({mime}); send photos, audio, video or text files."
    return IncomingFile(document.file_id, document.file_size, name, refusal)


def forwarded_from(message: Message) -> str | None:
    """Who wrote a forwarded message (a name, or "someone" when hidden); None if not forwarded."""
    origin = message.forward_origin
    if origin is None:
        return None
    user = getattr(origin, "sender_user", None)
    chat = getattr(origin, "sender_chat", None) or getattr(origin, "chat", None)
    name = (user.full_name if user is not None else None) or getattr(origin, "sender_user_name", None) \
        or (chat.title if chat is not None else None)
    return name or "someone"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name).name).strip(" .")
    return cleaned[-100:] or "file"


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


async def _retry(send: Callable[..., Awaitable[object]], *args: object, attempts: int = 3,
                 **kwargs: object) -> object:
    """``send(*args, **kwargs)``, retried with back-off on network errors (flood limits are
    python-telegram-bot's rate limiter's)."""
    for attempt in range(attempts):
        try:
            return await send(*args, **kwargs)
        except (BadRequest, Forbidden, TimedOut):
            raise  # a refusal, or a timeout after which the message may have been delivered
        except NetworkError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("Network error sending a message (%s); retrying", exc)
            await asyncio.sleep(2 ** attempt)
    raise AssertionError("unreachable")


class Access:
    """The allowlist: Telegram user ids and/or @usernames, and group chats whose members are
    all allowed there (or everyone with ``allow_all``).

    An allowed @username is bound, in the database, to the user id it is first seen with: that
    person stays allowed after renaming, and anyone else later presenting the name is refused."""

    def __init__(self, allowed: Iterable[str], memory: Memory, *, allowed_chats: Iterable[int] = (),
                 allow_all: bool = False) -> None:
        entries = [entry.strip() for entry in allowed if entry.strip()]
        self.ids = {int(entry) for entry in entries if entry.lstrip("-").isdigit()}
        self.usernames = {entry.lstrip("@").lower() for entry in entries if not entry.lstrip("-").isdigit()}
        self.chats = set(allowed_chats)
        self.allow_all = allow_all and not entries and not self.chats
        self.memory = memory
        self._bound = {name: user_id for name, user_id in memory.username_bindings().items()
                       if name in self.usernames}
        self._refused: RecentSet[tuple[int, int]] = RecentSet(REFUSALS_REMEMBERED)

    def allows(self, user: User, chat_id: int) -> bool:
        """Whether ``user`` may use the bot in the chat ``chat_id``."""
        if self.allow_all or chat_id in self.chats or user.id in self.ids or user.id in self._bound.values():
            return True
        name = (user.username or "").lower()
        if name not in self.usernames:
            return False
        bound = self._bound.get(name)
        if bound is None:
            bound = self._bound[name] = self.memory.bind_username(name, user.id)
            if bound == user.id:
                log.info("Bound @%s to Telegram user id %s", name, user.id)
        if bound != user.id:
            log.warning("Refused Telegram user %s presenting @%s, which belongs to user id %s",
                        user.id, name, bound)
        return bound == user.id

    def first_refusal(self, user: User, chat_id: int) -> bool:
        """True the first time ``user`` is refused in the chat ``chat_id`` in this process (they
        are told once there; of many strangers, the least recent may be told again)."""
        return self._refused.add((chat_id, user.id))


class Album:
    """The messages of one media group, collected until none has come for a moment."""

    def __init__(self, first: Message) -> None:
        self.messages = [first]
        self._last = time.monotonic()

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self._last = time.monotonic()

    async def complete(self, quiet: float) -> None:
        while (remaining := self._last + quiet - time.monotonic()) > 0:
            await asyncio.sleep(remaining)
        self.messages.sort(key=lambda m: m.message_id)


class LiveReply:
    """What a chat shows while a turn works, until its reply: the answer streamed so far, the
    tools' progress and the place in the queue, refreshed when the throttle lets it, and
    "typing…" until any of that is shown. Streaming is a nicety: when Telegram refuses it,
    the reply still comes as messages."""

    def __init__(self, bot: Bot, chat_id: int, options: BotOptions, throttle: Throttle) -> None:
        self.bot, self.chat_id, self.options, self.throttle = bot, chat_id, options, throttle
        self.streaming = True  # False once Telegram refused it for this reply
        self.visible = False  # something has been shown
        self._html = True  # False once Telegram refused this reply's HTML
        self._version = -1  # the view shown last

    async def action(self, action: str) -> None:
        with contextlib.suppress(TelegramError):
            await self.bot.send_chat_action(self.chat_id, action)

    async def follow(self, view: TurnView, stopping: Callable[[], bool], stop: Callable[[], object]) -> None:
        """Until cancelled: show the view; ``stop()`` the turn once ``stopping()`` says the bot is
        shutting down."""
        next_action = time.monotonic() + self.options.action_interval  # the caller sent the first
        while True:
            if stopping():
                stop()
            state = view.state
            if self.streaming and self.throttle.due(state.version != self._version):
                chunk = live_chunk(state)
                if chunk is not None:
                    self.throttle.shown()
                    self._version = state.version
                    await self._update(chunk)
            now = time.monotonic()
            if not self.visible and now >= next_action:  # no typing next to a streamed message
                await self.action(ChatAction.TYPING)
                next_action = now + self.options.action_interval
            await asyncio.sleep(min(self.throttle.interval, 0.25))

    async def _update(self, chunk: Chunk) -> None:
        html_on = self._html and chunk.html is not None
        try:
            await self.show(chunk.html if html_on else chunk.plain, ParseMode.HTML if html_on else None)
            self.visible = True
        except RetryAfter as exc:  # skipped, not retried; the next update waits the flood limit out
            log.info("Streaming paused by Telegram's flood limit (%s)", exc)
            self.throttle.pause(_retry_seconds(exc))
        except BadRequest as exc:
            if "not modified" in str(exc).lower():
                return
            log.info("Streaming %s refused (%s)", "HTML" if html_on else "text", exc)
            if html_on:
                self._html = False  # plain text next time
            else:
                self.streaming = False
        except TelegramError as exc:
            log.debug("Streaming update failed: %s", exc)

    async def show(self, text: str, parse_mode: str | None) -> None:
        """Show ``text`` (at most :data:`MESSAGE_LIMIT` characters) as the reply so far."""
        raise NotImplementedError

    async def settle(self, chunks: list[Chunk]) -> list[Chunk]:
        """The reply's messages that are still to be sent once the turn is done."""
        return chunks


class DraftReply(LiveReply):
    """A private chat: the reply streams as a message draft (one ``draft_id`` per reply); the
    draft is refreshed while nothing changes (drafts last about 30 s) and gives way to the
    final messages."""

    def __init__(self, bot: Bot, chat_id: int, options: BotOptions) -> None:
        super().__init__(bot, chat_id, options, Throttle(options.draft_interval, options.draft_refresh))
        self.draft_id = secrets.randbelow(2**31 - 1) + 1  # non-zero

    async def show(self, text: str, parse_mode: str | None) -> None:
        await self.bot.send_message_draft(self.chat_id, self.draft_id, text, parse_mode=parse_mode,
                                          rate_limit_args=_NO_RETRY)


class EditedReply(LiveReply):
    """A group: one message edited as the reply grows (at most every ``edit_interval``: the
    flood limit counts every request to a group), replaced by the reply's first message."""

    def __init__(self, bot: Bot, chat_id: int, options: BotOptions) -> None:
        super().__init__(bot, chat_id, options, Throttle(options.edit_interval))
        self.message: Message | None = None

    async def show(self, text: str, parse_mode: str | None) -> None:
        if self.message is None:
            self.message = await self.bot.send_message(self.chat_id, text, parse_mode=parse_mode,
                                                       link_preview_options=_NO_PREVIEW,
                                                       rate_limit_args=_NO_RETRY)
        else:
            await self.bot.edit_message_text(text, self.chat_id, self.message.message_id,
                                             parse_mode=parse_mode, link_preview_options=_NO_PREVIEW,
                                             rate_limit_args=_NO_RETRY)

    async def settle(self, chunks: list[Chunk]) -> list[Chunk]:
        if self.message is None:
            return chunks
        message, self.message = self.message, None
        if chunks and await self._replace(message, chunks[0]):
            return chunks[1:]
        with contextlib.suppress(TelegramError):  # the reply comes as new messages instead
            await message.delete()
        return chunks

    async def _replace(self, message: Message, chunk: Chunk) -> bool:
        attempts = [(chunk.html, ParseMode.HTML)] if chunk.html is not None else []
        attempts.append((chunk.plain[:MESSAGE_LIMIT], None))
        for text, parse_mode in attempts:
            try:
                await _retry(self.bot.edit_message_text, text, self.chat_id, message.message_id,
                             parse_mode=parse_mode, link_preview_options=_NO_PREVIEW)
                return True
            except BadRequest as exc:
                if "not modified" in str(exc).lower():  # it shows the final text already
                    return True
                log.warning("Could not replace the streamed message (%s)", exc)
            except TelegramError as exc:
                log.warning("Could not replace the streamed message (%s)", exc)
                return False
        return False


def live_reply(bot: Bot, chat: Chat, options: BotOptions) -> LiveReply:
    """Drafts in a private chat, an edited message elsewhere."""
    if chat.type == ChatType.PRIVATE:
        return DraftReply(bot, chat.id, options)
    return EditedReply(bot, chat.id, options)


def reply_markdown(text: str, results: Sequence[str], heard: Sequence[str]) -> str:
    """A reply as one Markdown text: what was heard in a voice note first, as a quote, then the
    model's words, then the measured results as a short block under them."""
    text = text.strip()
    if heard:
        text = "\n".join(f"> {line}" for line in heard) + "\n\n" + text
    measured = [line for line in results if line not in heard]
    if measured:
        text += "\n\n" + "\n".join(f"`{line}`" for line in measured)
    return text.strip()


def live_chunk(state: ViewState) -> Chunk | None:
    """The running turn as one message: the end of the answer streamed so far with the results
    measured so far (rendered like the reply) and the progress or queue line; None while there
    is nothing to show."""
    status = state.status_line()
    text = reply_markdown(state.text, state.results, state.heard)
    if not text:
        return Chunk(None, status) if status else None
    room = MESSAGE_LIMIT - (len(status) + 2 if status else 0)
    chunk = (render_markdown(text, room) or [Chunk(None, text[-room:])])[-1]
    if status:
        return Chunk(None if chunk.html is None else f"{chunk.html}\n\n{html.escape(status, quote=False)}",
                     f"{chunk.plain}\n\n{status}")
    return chunk


def _retry_seconds(error: RetryAfter) -> float:
    """How long the flood limit lasts (``retry_after`` is moving from seconds to a timedelta;
    python-telegram-bot warns on every read until one opts in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


#: ``rate_limit_args`` of a streamed update: answered with 429, it is skipped, not retried.
_NO_RETRY = "no retry"
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


class RateLimiter(AIORateLimiter):
    """python-telegram-bot's rate limiter (throttles, retries after a 429's ``retry_after``),
    except that a request made with ``rate_limit_args=_NO_RETRY`` gets the 429 at once
    (AIORateLimiter reads 0 retries as "the default")."""

    async def process_request(self, callback: Callable[..., Awaitable[object]], args: object,
                              kwargs: dict, endpoint: str, data: dict, rate_limit_args: object) -> object:
        if rate_limit_args != _NO_RETRY:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        async def once(*a: object, **kw: object) -> object:
            try:
                return await callback(*a, **kw)
            except RetryAfter as exc:  # not a RetryAfter to the limiter, so not retried
                raise _Flood(exc) from exc

        try:
            return await super().process_request(once, args, kwargs, endpoint, data, None)
        except _Flood as flood:
            raise flood.error from None


class _Flood(Exception):
    def __init__(self, error: RetryAfter) -> None:
        super().__init__(str(error))
        self.error = error


# ---------------------------------------------------------------------------------------------
# Markdown → Telegram HTML, split below the message limit

@dataclass(frozen=True)
class Chunk:
    """One message: Telegram HTML (None to send it as plain text) and its plain-text fallback."""

    html: str | None
    plain: str


#: What the bot sends: a message, or a media file after the reply's text.
Outgoing = Chunk | Media


def render_markdown(text: str, limit: int = MESSAGE_LIMIT) -> list[Chunk]:
    """The agent's Markdown as messages of Telegram HTML, each at most ``limit`` characters,
    split between paragraphs (blocks); a block too long on its own goes as plain text split at
    lines, then words. Everything is escaped; only tags Telegram knows are produced."""
    chunks: list[Chunk] = []
    html_parts: list[str] = []
    plain_parts: list[str] = []

    def flush() -> None:
        if html_parts:
            chunks.append(Chunk("\n\n".join(html_parts), "\n\n".join(plain_parts)))
            html_parts.clear()
            plain_parts.clear()

    for block_html, block_plain in _markdown_blocks(text):
        if not block_html.strip():
            continue
        if len(block_html) > limit:
            flush()
            chunks.extend(Chunk(None, part) for part in split_text(block_plain, limit))
            continue
        if len("\n\n".join([*html_parts, block_html])) > limit:
            flush()
        html_parts.append(block_html)
        plain_parts.append(block_plain)
    flush()
    return chunks


_SAFE_LINK = re.compile(r"^(https?://|tg://|mailto:)", re.IGNORECASE)


def _markdown_blocks(text: str) -> list[tuple[str, str]]:
    """Top-level Markdown blocks as (Telegram HTML, the block's Markdown source)."""
    from markdown_it import MarkdownIt

    source_lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    blocks: list[tuple[str, str]] = []
    start = 0
    for index, token in enumerate(tokens):
        if token.level != 0:
            continue
        if token.nesting == 1:
            start = index
            continue
        block = tokens[start:index + 1] if token.nesting == -1 else [token]
        first = block[0]
        lines = first.map or [0, len(source_lines)]
        blocks.append((_render_block(block).strip(), "\n".join(source_lines[lines[0]:lines[1]]).strip()))
    return blocks


def _render_block(tokens: list) -> str:
    out = ""
    lists: list[list] = []  # [ordered?, next number]
    cells = 0
    for token in tokens:
        kind = token.type
        if kind == "inline":
            out += _render_inline(token.children or [])
        elif kind == "heading_open":
            out += "<b>"
        elif kind == "heading_close":
            out += "</b>\n"
        elif kind == "paragraph_close" and not token.hidden and token.level > 0:
            out += "\n"
        elif kind in ("bullet_list_open", "ordered_list_open"):
            ordered = kind == "ordered_list_open"
            lists.append([ordered, int(token.attrGet("start") or 1) if ordered else 0])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "list_item_open":
            if out and not out.endswith("\n"):
                out += "\n"
            marker = "•"
            if lists and lists[-1][0]:
                marker = f"{lists[-1][1]}."
                lists[-1][1] += 1
            out += "   " * (len(lists) - 1) + marker + " "
        elif kind == "list_item_close":
            out = out.rstrip("\n") + "\n"
        elif kind == "blockquote_open":
            out += "<blockquote>"
        elif kind == "blockquote_close":
            out = out.rstrip("\n") + "</blockquote>\n"
        elif kind in ("fence", "code_block"):
            language = re.sub(r"[^\w+#-]", "", (token.info or "").split(" ")[0])
            code = html.escape(token.content.rstrip("\n"), quote=False)
            out += (f'<pre><code class="language-{language}">{code}</code></pre>' if language
                    else f"<pre>{code}</pre>")
        elif kind == "hr":
            out += "———"
        elif kind == "html_block":
            out += html.escape(token.content, quote=False)
        elif kind == "tr_open":
            cells = 0
        elif kind in ("th_open", "td_open"):
            out += " | " if cells else ""
            out += "<b>" if kind == "th_open" else ""
            cells += 1
        elif kind == "th_close":
            out += "</b>"
        elif kind == "tr_close":
            out += "\n"
    return out


def _render_inline(tokens: list) -> str:
    out = ""
    links: list[bool] = []
    tags = {"strong_open": "<b>", "strong_close": "</b>", "em_open": "<i>", "em_close": "</i>",
            "s_open": "<s>", "s_close": "</s>"}
    for token in tokens:
        kind = token.type
        if kind in tags:
            out += tags[kind]
        elif kind == "code_inline":
            out += f"<code>{html.escape(token.content, quote=False)}</code>"
        elif kind == "link_open":
            href = str(token.attrGet("href") or "")
            links.append(bool(_SAFE_LINK.match(href)))
            out += f'<a href="{html.escape(href, quote=True)}">' if links[-1] else ""
        elif kind == "link_close":
            out += "</a>" if links and links.pop() else ""
        elif kind in ("softbreak", "hardbreak"):
            out += "\n"
        else:  # text, html_inline, image (its alt text), anything new: shown as text
            out += html.escape(token.content, quote=False)
    return out
