"""The outbox: messages Telegram did not take (the Bot API unreachable, the token refused), kept
in the channel's table ``telegram_outbox`` until they are delivered, in order per chat."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from adapters.telegram.markdown import Chunk
from assistant.database import transaction


@dataclass(frozen=True)
class Media:
    """A photo or video to send (its path)."""

    path: str


class Outbox:
    """Messages Telegram did not take, kept in the database (a restart keeps them) until they
    are delivered, in order per chat."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

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


#: What the bot sends: a message, or a media file after the reply's text (the place for a
#: voice answer, sent after the text, too).
Outgoing = Chunk | Media
