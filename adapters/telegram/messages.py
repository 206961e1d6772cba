"""Messages that are not commands: the text and files of a message (or album, or the message
it replies to) become one turn; its files are downloaded and registered as attachments; the
turn streams into the chat while it works; its reply is sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from telegram import Message, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, InvalidToken, TelegramError
from telegram.ext import ContextTypes

from adapters.telegram.incoming import (Album, IncomingFile, conversation_id, incoming_file, message_text,
                                        quoted, replied_to, same_sender, sender_name)
from adapters.telegram.live import LiveReply, live_reply
from adapters.telegram.markdown import Chunk, render_markdown, reply_markdown
from adapters.telegram.outbox import Media
from adapters.telegram.settings import PUBLIC_DOWNLOAD_LIMIT
from assistant.errors import ToolError
from assistant.session import TurnView
from assistant.turns import Reply, Turn
from assistant.voice import VoiceError
from tools.media import megabytes

if TYPE_CHECKING:
    from adapters.telegram.bot import TelegramBot

log = logging.getLogger("assistant.telegram")


class Messages:
    """Messages that are not commands: each (or each album) becomes one turn of the agent."""

    def __init__(self, shared: TelegramBot) -> None:
        self.shared = shared
        self._albums: dict[tuple[int, str], Album] = {}

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Answer a message, or an album once it is complete, in the chat's order."""
        message = update.message
        chat_id = message.chat_id
        if message.media_group_id:
            key = (chat_id, message.media_group_id)
            album = self._albums.get(key)
            if album is not None:  # the first message of the album answers for all of them
                album.add(message)
                return
            album = self._albums[key] = Album(message)
            async with self.shared.in_order(chat_id):
                await album.complete(self.shared.options.album_wait)
                self._albums.pop(key, None)
                if await self.shared.admitted(context, album.messages):  # not a group's chatter
                    await self._answer(context, chat_id, album.messages)
            return
        async with self.shared.in_order(chat_id):
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
            await self.shared.send_text(context, chat_id, "\n".join(refusals), plain=True)
            return
        if not text and not files:
            if any(m.text or m.caption for m in messages):  # only "@bot"
                await self.shared.send_text(context, chat_id, f"Yes? Write your question after "
                                            f"@{bot.username}, or mention me in reply to a photo, voice "
                                            "note or video to ask about it.", plain=True)
                return
            await self.shared.send_text(context, chat_id, "I can read text, photos, audio, voice "
                                        "notes and video; this kind of message I can't use.", plain=True)
            return
        too_big = [f for f in files if f.size is not None and f.size > self.shared.download_limit]
        if too_big:
            await self.shared.send_text(context, chat_id, self._too_big_message(too_big), plain=True)
            return

        conversation = conversation_id(chat_id)
        live = live_reply(bot, messages[0].chat, self.shared.options)
        turn = Turn(conversation, text)
        if files:
            await live.action(ChatAction.TYPING)  # downloading takes a moment too
            store = self.shared.agent.attachments(conversation)
            for incoming in files:
                try:
                    path = await self._download(context, incoming, store.new_path(incoming.name))
                except NotDownloaded as refusal:
                    await self.shared.send_text(context, chat_id, str(refusal), plain=True)
                    return
                try:
                    turn.attachments.append(store.register(path, name=incoming.name, voice=incoming.voice,
                                                           forwarded_from=incoming.forwarded_from))
                except ToolError as exc:
                    await self.shared.send_text(context, chat_id, str(exc), plain=True)
                    return
        reply = await self._respond(context, turn, live)
        await self._send_reply(context, chat_id, reply, live)
        await self._speak(context, chat_id, turn, reply)

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
                raise NotDownloaded(gone_message(incoming)) from exc
            raise
        if remote.file_size is not None and remote.file_size > self.shared.download_limit:
            raise NotDownloaded(self._too_big_message([incoming]))
        try:
            return await remote.download_to_drive(destination, read_timeout=120)
        except InvalidToken as exc:  # python-telegram-bot's name for any 404 (and 401) answer
            if "not found" not in str(exc).lower():
                raise
            log.warning("Downloading %s from Telegram answered 404 Not Found: the file is gone from "
                        "Telegram's servers (expired or deleted)", incoming.name)
            raise NotDownloaded(gone_message(incoming)) from exc

    def _too_big_message(self, files: Iterable[IncomingFile]) -> str:
        sizes = ", ".join(f"{f.name} is {megabytes(f.size)}" if f.size else f.name for f in files)
        message = f"That file is too large for me ({sizes}); I take files up to " \
                  f"{megabytes(self.shared.download_limit)}."
        if self.shared.public_api and self.shared.download_limit == PUBLIC_DOWNLOAD_LIMIT:
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
            stop=lambda: self.shared.session.cancel(turn.conversation_id)))
        try:  # the handler holds the chat's order
            return await self.shared.session.respond(turn, view)
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
        delivery = self.shared.delivery
        if not delivery.waiting(chat_id):  # else the streamed message would jump the line
            chunks = await live.settle(chunks)  # a group's streamed message becomes the first
        # The text first, then the media; a voice reply comes after both.
        await delivery.send(context.bot, chat_id, [*chunks, *(Media(str(path)) for path in reply.media)])

    async def _speak(self, context: ContextTypes.DEFAULT_TYPE, chat_id: int, turn: Turn, reply: Reply) -> None:
        """The reply as a voice note, after its text, when the chat's voice mode asks for it
        ("recording voice…" while it is made); why not, in one line, when it cannot be made."""
        voice = self.shared.voice
        if not await asyncio.to_thread(voice.wanted, turn, reply):
            return
        recording = asyncio.create_task(_keep_showing(context.bot, chat_id, ChatAction.RECORD_VOICE))
        try:
            path = await asyncio.to_thread(self._voice_file, turn.conversation_id, reply)
        except VoiceError as exc:
            await self.shared.send_text(context, chat_id, f"(No voice reply: {exc})", plain=True)
            return
        finally:
            recording.cancel()
        await self.shared.delivery.send(context.bot, chat_id, [Media(str(path))])

    def _voice_file(self, conversation: str, reply: Reply) -> Path:
        """The spoken reply, saved beside the conversation's outputs (the outbox may hold it)."""
        spoken = self.shared.voice.speak(reply)
        path = self.shared.agent.output_dir(conversation) / f"voice-{time.time_ns()}.ogg"
        path.write_bytes(spoken.audio)
        return path


class NotDownloaded(Exception):
    """A file the bot could not download; the message says why, for the sender."""


async def _keep_showing(bot, chat_id: int, action: str) -> None:
    """Show ``action`` ("recording voice…") until cancelled (Telegram shows one for 5 s)."""
    while True:
        with contextlib.suppress(TelegramError):
            await bot.send_chat_action(chat_id, action)
        await asyncio.sleep(4)


def gone_message(incoming: IncomingFile) -> str:
    return (f"I couldn't get {incoming.name} from Telegram: the file is no longer available there "
            "(expired or deleted). Please send it again.")
