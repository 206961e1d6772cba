"""What a chat shows while a turn works: the answer streamed so far, the tools' progress and
the place in the queue, as a message draft (private chats) or one message edited as it grows
(groups)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import secrets
import time
from collections.abc import Callable

from telegram import Bot, Chat, Message
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, RetryAfter, TelegramError

from adapters.telegram.markdown import NO_PREVIEW, Chunk, render_markdown, reply_markdown
from adapters.telegram.ratelimit import NO_RETRY, retry, retry_seconds
from adapters.telegram.settings import MESSAGE_LIMIT, BotOptions
from assistant.session import Throttle, TurnView, ViewState

log = logging.getLogger("assistant.telegram")


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
            self.throttle.pause(retry_seconds(exc))
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
                                          rate_limit_args=NO_RETRY)


class EditedReply(LiveReply):
    """A group: one message edited as the reply grows (at most every ``edit_interval``: the
    flood limit counts every request to a group), replaced by the reply's first message."""

    def __init__(self, bot: Bot, chat_id: int, options: BotOptions) -> None:
        super().__init__(bot, chat_id, options, Throttle(options.edit_interval))
        self.message: Message | None = None

    async def show(self, text: str, parse_mode: str | None) -> None:
        if self.message is None:
            self.message = await self.bot.send_message(self.chat_id, text, parse_mode=parse_mode,
                                                       link_preview_options=NO_PREVIEW,
                                                       rate_limit_args=NO_RETRY)
        else:
            await self.bot.edit_message_text(text, self.chat_id, self.message.message_id,
                                             parse_mode=parse_mode, link_preview_options=NO_PREVIEW,
                                             rate_limit_args=NO_RETRY)

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
                await retry(self.bot.edit_message_text, text, self.chat_id, message.message_id,
                             parse_mode=parse_mode, link_preview_options=NO_PREVIEW)
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
