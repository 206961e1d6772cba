"""The SQLite file under :mod:`assistant.memory`: its write transactions, what is wrong with it
said for people (which file, what, what to do: :class:`~assistant.errors.StorageError`), its
check (``PRAGMA quick_check``, and every stored turn readable, for `assistant doctor`), and which
process an open turn belongs to (so that only a turn whose process is gone is interrupted).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import messages_from_dict

from assistant.errors import StorageError


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (taking the write lock at once, so several processes are safe).
    A statement that fails on a full disk or an I/O error has already rolled it back (SQLite
    does that itself): then there is nothing left to roll back, and the error is what is raised."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------------------------------------
# What is wrong with the database, said for people

#: What parsing a damaged stored turn raises.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)
#: SQLite's result codes (``sqlite3.Error.sqlite_errorname``, primary part) by what they mean.
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_NOT_WRITABLE = {"SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"}
_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}


def storage_error(path: Path | str, exc: BaseException) -> StorageError:
    """A database error as people need it: which file, what is wrong, what to do."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    code = "_".join((getattr(exc, "sqlite_errorname", None) or "").split("_")[:2])
    if code in _DAMAGED or "malformed" in reason or "not a database" in reason:
        return StorageError(path, f"is damaged ({reason})",
                            f"move it aside (`mv '{path}' '{path}.damaged'`): a new, empty one is made "
                            "at the next start; or restore it from a backup")
    if code in _BUSY:
        return StorageError(path, f"is busy ({reason}): another process holds it",
                            "try again, or give this process its own ASSISTANT_DB")
    if code in _NOT_WRITABLE or isinstance(exc, OSError):
        return StorageError(path, f"cannot be written ({reason})",
                            "free some disk space, or make it writable, or set ASSISTANT_DB to a "
                            "writable place")
    return StorageError(path, f"failed ({reason})", "`assistant doctor` checks it")


class Guard:
    """The lock around a connection's use (``with guard:``), which also turns its database
    errors into a :class:`StorageError` (:func:`storage_error`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise storage_error(self.path, exc) from exc


def check_database(db: sqlite3.Connection) -> str | None:
    """What is wrong with the database's structure (``PRAGMA quick_check``: every page and
    record read once), or None when it is sound."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    return None if problems == ["ok"] else "; ".join(" ".join(problem.split()) for problem in problems)


def connect(path: Path, prepare: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """Open (or create) the database file at ``path`` (``:memory:`` for none): its structure
    checked first, then WAL, then ``prepare`` (the migrations). :class:`StorageError` saying
    what to do when it cannot be opened, is damaged or cannot be brought up to date."""
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise storage_error(path, exc) from exc
    try:
        # Text that is not UTF-8 (a damaged record) is read with replacement characters, so
        # that it fails where it is parsed, for that turn alone.
        db.text_factory = _lenient_text
        db.execute("PRAGMA busy_timeout=5000")
        problem = check_database(db)
        if problem is not None:
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, no fsync per turn
        prepare(db)
    except sqlite3.Error as exc:
        db.close()
        raise storage_error(path, exc) from exc
    return db


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def inspect_database(path: Path) -> StorageError | None:
    """What is wrong with the database file at ``path`` (and what to do), or None when it opens,
    its structure is sound and every stored turn can be read. Only reads: nothing is migrated or
    written (`assistant doctor`)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.text_factory = _lenient_text
        try:
            problem = check_database(db)
            has_turns = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'turns'").fetchone()
            rows = db.execute("SELECT id, messages FROM turns") if problem is None and has_turns else ()
            unreadable = [turn_id for turn_id, data in rows if not _readable(data)]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return storage_error(path, exc)
    if problem is not None:
        return storage_error(path, sqlite3.DatabaseError(f"database disk image is malformed: {problem}"))
    if unreadable:
        listed = ", ".join(map(str, unreadable[:5])) + (", …" if len(unreadable) > 5 else "")
        damaged = storage_error(path, sqlite3.DatabaseError(
            f"malformed records: {len(unreadable)} stored turn(s) cannot be read: {listed}"))
        return StorageError(path, damaged.problem,
                            f"they are left out of the history; to start afresh, {damaged.todo}")
    return None


def _readable(data: str) -> bool:
    try:
        messages_from_dict(json.loads(data))
    except UNREADABLE:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Which process an open turn belongs to

def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command's name


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_token() -> str:
    """This process, as an open turn's owner: host, boot, process id and start time (a process
    id alone is given again to another process later)."""
    return _token(os.getpid())


@functools.cache
def _token(pid: int) -> str:  # by process id: a forked child is another owner
    return "/".join((socket.gethostname(), _boot_id(), str(pid), _start_time(pid) or ""))


def owner_is_gone(owner: str | None) -> bool:
    """Whether the process that left a turn open has ended (then the turn was interrupted).
    This process counts as gone (its own open turn of a conversation whose next turn begins
    never finished); a process on another host cannot be looked at and counts as running."""
    if owner is None or owner == process_token():
        return True
    host, boot, pid, started = (owner.split("/") + ["", "", "", ""])[:4]
    mine_host, mine_boot, _, _ = process_token().split("/")
    if host != mine_host:
        return False
    if boot != mine_boot or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        pass
    return bool(started) and _start_time(int(pid)) != started
