"""Who may use the bot: the allowlist of user ids and @usernames (each name bound to the first
user id seen with it, in the channel's own table), allowed groups, and strangers told once."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import Protocol

from telegram import User

from assistant.recent import RecentSet

log = logging.getLogger("assistant.telegram")

#: Refused users (in a chat) remembered as told (strangers are many; the least recent are forgotten).
REFUSALS_REMEMBERED = 4096


class UsernameStore(Protocol):
    """Where each allowed @username is bound to the Telegram user id first seen with it."""

    def bind(self, username: str, user_id: int) -> int:
        """The user id ``username`` (lower case) is bound to: ``user_id`` if the name is new."""

    def bindings(self) -> dict[str, int]:
        """Every bound @username (lower case) and its user id."""


class SQLiteUsernames:
    """:class:`UsernameStore` in the channel's table ``telegram_allowed_usernames``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def bind(self, username: str, user_id: int) -> int:
        self._db.execute("INSERT OR IGNORE INTO telegram_allowed_usernames (username, user_id, bound) "
                         "VALUES (?, ?, ?)", (username, user_id, time.time()))
        return self._db.execute("SELECT user_id FROM telegram_allowed_usernames WHERE username = ?",
                                (username,)).fetchone()[0]

    def bindings(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT username, user_id FROM telegram_allowed_usernames"))


class Access:
    """The allowlist: Telegram user ids and/or @usernames, and group chats whose members are
    all allowed there (or everyone with ``allow_all``).

    An allowed @username is bound, in the database, to the user id it is first seen with: that
    person stays allowed after renaming, and anyone else later presenting the name is refused."""

    def __init__(self, allowed: Iterable[str], usernames: UsernameStore, *, allowed_chats: Iterable[int] = (),
                 allow_all: bool = False, remembered: int = REFUSALS_REMEMBERED) -> None:
        entries = [entry.strip() for entry in allowed if entry.strip()]
        self.ids = {int(entry) for entry in entries if entry.lstrip("-").isdigit()}
        self.usernames = {entry.lstrip("@").lower() for entry in entries if not entry.lstrip("-").isdigit()}
        self.chats = set(allowed_chats)
        self.allow_all = allow_all and not entries and not self.chats
        self.usernames_store = usernames
        self._bound = {name: user_id for name, user_id in usernames.bindings().items()
                       if name in self.usernames}
        self._refused: RecentSet[tuple[int, int]] = RecentSet(remembered)

    def allows(self, user: User, chat_id: int) -> bool:
        """Whether ``user`` may use the bot in the chat ``chat_id``."""
        if self.allow_all or chat_id in self.chats or user.id in self.ids or user.id in self._bound.values():
            return True
        name = (user.username or "").lower()
        if name not in self.usernames:
            return False
        bound = self._bound.get(name)
        if bound is None:
            bound = self._bound[name] = self.usernames_store.bind(name, user.id)
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
