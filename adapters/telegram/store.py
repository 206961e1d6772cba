"""The channel's own tables in the assistant's database (apart from the core's): the allowlist's
@username bindings and the outbox. Versioned like the core's schema, with the version kept in
``telegram_schema`` (the core keeps ``PRAGMA user_version``). A per-chat preference (such as a
voice setting) is one more step here and a small class beside the others."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from assistant.database import storage_error, transaction


def _move_legacy_usernames(db: sqlite3.Connection) -> None:
    """Bindings made before the channel had its own tables lived in the core's
    ``telegram_usernames``: they move here, and that table goes."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'telegram_usernames'").fetchone():
        db.execute("INSERT OR IGNORE INTO telegram_allowed_usernames (username, user_id, bound) "
                   "SELECT username, user_id, bound FROM telegram_usernames")
        db.execute("DROP TABLE telegram_usernames")


#: One step per version; a step is SQL statements or a function of the connection. Append;
#: never change a step that has shipped.
STORE_MIGRATIONS: tuple[tuple[str | Callable[[sqlite3.Connection], None], ...], ...] = (
    # Messages Telegram did not take (unreachable, token refused), in order per chat.
    ("""CREATE TABLE telegram_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            chat_id INTEGER NOT NULL,
            media TEXT,
            html TEXT,
            plain TEXT NOT NULL,
            created REAL NOT NULL)""",),
    # The Telegram user id each allowed @username was first seen with.
    ("""CREATE TABLE telegram_allowed_usernames (
            username TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL,
            bound REAL NOT NULL)""",
     _move_legacy_usernames),
)


def _version(db: sqlite3.Connection) -> int:
    """The channel's schema version (0 before its first step)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'telegram_schema'").fetchone():
        return 0
    row = db.execute("SELECT version FROM telegram_schema").fetchone()
    return row[0] if row else 0


def migrate_store(db: sqlite3.Connection) -> None:
    """Bring the channel's tables up to :data:`STORE_MIGRATIONS` (safe with several processes).
    An up-to-date store is only read (so the bot starts on a full disk)."""
    if _version(db) >= len(STORE_MIGRATIONS):
        return
    with transaction(db):  # the version is read again under the write lock
        db.execute("CREATE TABLE IF NOT EXISTS telegram_schema (version INTEGER NOT NULL)")
        version = _version(db)
        for step in STORE_MIGRATIONS[version:]:
            for statement in step:
                if callable(statement):
                    statement(db)
                else:
                    db.execute(statement)
        db.execute("DELETE FROM telegram_schema")
        db.execute("INSERT INTO telegram_schema (version) VALUES (?)", (max(version, len(STORE_MIGRATIONS)),))


def open_store(path: Path | str) -> sqlite3.Connection:
    """The assistant's database (``:memory:`` for a private one), with the channel's tables up
    to date; one connection, used from the event loop's thread (its queries are small).
    :class:`StorageError` saying what to do when it cannot be opened or brought up to date."""
    try:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise storage_error(path, exc) from exc
    try:
        db.execute("PRAGMA busy_timeout=5000")
        migrate_store(db)
    except sqlite3.Error as exc:
        db.close()
        raise storage_error(path, exc) from exc
    return db
