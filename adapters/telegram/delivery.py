"""Sending the bot's messages: Markdown as Telegram HTML (plain text where Telegram refuses
it), annotated photos and videos after the text, retried on network errors; what Telegram does
not take (the Bot API unreachable, the token refused) waits in the outbox and is sent, in
order per chat, when Telegram takes messages again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from telegram import Bot
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError

from adapters.telegram.markdown import NO_PREVIEW, Chunk, render_markdown
from adapters.telegram.outbox import Media, Outbox, Outgoing
from adapters.telegram.ratelimit import retry
from adapters.telegram.settings import MESSAGE_LIMIT, PUBLIC_UPLOAD_LIMIT, BotOptions
from assistant.session import split_text
from tools.media import megabytes

log = logging.getLogger("assistant.telegram")


class Delivery:
    """The bot's way out to Telegram, with the outbox."""

    def __init__(self, outbox: Outbox, options: BotOptions, *, public_api: bool) -> None:
        self.outbox = outbox
        self.options = options
        self.public_api = public_api  # uploads are limited to 50 MB there
        self._bot: Bot | None = None
        self._delivery: asyncio.Task | None = None  # sends what the outbox keeps

    def start(self, bot: Bot) -> None:
        """Send what an earlier run kept; later deliveries of kept messages use ``bot`` too."""
        self._bot = bot
        if self.outbox.chats():
            self._start_delivery()

    async def stop(self) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery

    def waiting(self, chat_id: int) -> bool:
        """Whether messages to ``chat_id`` wait in the outbox (new ones go after them)."""
        return self.outbox.holds(chat_id)

    async def send_text(self, bot: Bot, chat_id: int, text: str, *, plain: bool = False) -> None:
        """``text`` (Markdown unless ``plain``) as one or more messages below the limit."""
        if plain:
            chunks = [Chunk(None, part) for part in split_text(text, MESSAGE_LIMIT)]
        else:
            chunks = render_markdown(text)
        await self.send(bot, chat_id, chunks)

    async def send(self, bot: Bot, chat_id: int, items: Sequence[Outgoing]) -> None:
        """Send ``items`` in order. What Telegram does not take now (the Bot API unreachable,
        the token refused) is kept in the outbox, with everything after it for the chat, and
        sent when Telegram takes messages again."""
        if self.outbox.holds(chat_id):  # earlier messages still wait: these go after them
            self._keep(chat_id, items, "earlier replies are still waiting")
            return
        for index, item in enumerate(items):
            try:
                await self._send_item(bot, chat_id, item)
            except TelegramError as exc:
                if not _unreachable(exc):
                    raise
                self._keep(chat_id, items[index:], f"{type(exc).__name__}: {exc}")
                return

    def _keep(self, chat_id: int, items: Sequence[Outgoing], why: str) -> None:
        self.outbox.add(chat_id, items)
        log.warning("%d message(s) to chat %s kept in the outbox (%s); they are sent when Telegram "
                    "takes messages again", len(items), chat_id, why)
        self._start_delivery()

    def _start_delivery(self) -> None:
        if self._bot is not None and (self._delivery is None or self._delivery.done()):
            self._delivery = asyncio.create_task(self._deliver_kept(self._bot))

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
                        except TelegramError as exc:
                            if _unreachable(exc):
                                raise  # tried again later
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
                await retry(bot.send_message, chat_id, chunk.html, parse_mode=ParseMode.HTML,
                             link_preview_options=NO_PREVIEW, attempts=attempts)
                return
            except BadRequest as exc:  # Telegram could not parse it: say it plainly instead
                log.warning("HTML reply refused (%s); sending it as plain text", exc)
        for part in split_text(chunk.plain, MESSAGE_LIMIT):
            await retry(bot.send_message, chat_id, part, attempts=attempts)

    async def _send_media(self, bot: Bot, chat_id: int, path: Path) -> None:
        """An annotated photo or video, or a voice reply (OGG/Opus); as a document if Telegram
        refuses it as media."""
        if not path.is_file():
            log.warning("Reply media %s does not exist; skipped", path)
            return
        size = path.stat().st_size
        if self.public_api and size > PUBLIC_UPLOAD_LIMIT:
            await self._send_chunk(bot, chat_id, Chunk(None, f"The annotated {path.name} is "
                                   f"{megabytes(size)}, more than Telegram lets a bot send (50 MB)."))
            return
        video = path.suffix.lower() in (".mp4", ".mov", ".webm", ".mkv")
        voice = path.suffix.lower() == ".ogg"
        action = ChatAction.UPLOAD_VIDEO if video else ChatAction.UPLOAD_VOICE if voice else ChatAction.UPLOAD_PHOTO
        with contextlib.suppress(TelegramError):
            await bot.send_chat_action(chat_id, action)
        try:
            with path.open("rb") as handle:
                if video:
                    await bot.send_video(chat_id, handle, filename=path.name, supports_streaming=True)
                elif voice:
                    await bot.send_voice(chat_id, handle, filename=path.name)
                else:
                    await bot.send_photo(chat_id, handle, filename=path.name)
        except BadRequest as exc:  # too large for a photo, unusual dimensions, ...
            log.warning("Sending %s as media failed (%s); sending it as a document", path.name, exc)
            with path.open("rb") as handle:
                await bot.send_document(chat_id, handle, filename=path.name)

    # -- errors ---------------------------------------------------------------------------------


def _unreachable(error: TelegramError) -> bool:
    """Whether ``error`` says Telegram did not take a message for now (the network, the Bot
    API, the token), rather than refused this message (BadRequest is a NetworkError too)."""
    return isinstance(error, (NetworkError, InvalidToken)) and not isinstance(error, BadRequest)
