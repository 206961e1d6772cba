"""Conversation memory: the messages of each turn, per conversation id, in SQLite.

A turn (the user's message, the tool calls and results, the answer) is stored as one row,
so that trimming to the context budget always drops whole turns and never separates a
tool call from its result; turns are dropped in blocks, so the start of what the model reads
stays the same for several turns and its prompt cache keeps serving it.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from langchain_core.messages import (AIMessage, BaseMessage, HumanMessage, ToolMessage, messages_from_dict,
                                     messages_to_dict)

from assistant.attachments import Attachment
from assistant.database import UNREADABLE, Guard, connect, owner_is_gone, process_token, transaction

log = logging.getLogger(__name__)

#: Rough characters per token for budgeting (Llama 3's tokenizer averages ~4 for English,
#: fewer for Russian; the reserve in the budget absorbs the difference).
CHARS_PER_TOKEN = 4
#: Tokens counted per message on top of its text (role markers, tool-call framing).
MESSAGE_OVERHEAD = 8
#: Turns read back from the database at most (older ones can never fit a context window).
MAX_TURNS_LOADED = 200
#: Conversations whose turns are kept parsed in memory (least recently used ones are let go).
CACHED_CONVERSATIONS = 256
#: Old turns are dropped from the history in blocks of this many, counted from the
#: conversation's first turn: the history then starts at the same turn until a whole block
#: more must go, so consecutive requests share their prefix (Ollama's prompt cache).
HISTORY_BLOCK_TURNS = 4
#: Room kept for the note that stands for the dropped turns (its size does not depend on
#: the budget left, so it changes only when another block is dropped).
DROPPED_NOTE_TOKENS = 100

#: The database schema, one step per version (``PRAGMA user_version``): a database is brought
#: up to date by the steps after its version, in one transaction, when it is opened. Append new
#: steps; never change a step that has shipped. Databases made before versioning (version 0,
#: with a ``turns`` table) are brought up to date by the same steps.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("""CREATE TABLE IF NOT EXISTS turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL,
            messages TEXT NOT NULL,
            created REAL NOT NULL)""",
     "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation_id, id)"),
    # The Telegram user id each allowed @username was first seen with (shipped here; the
    # Telegram channel's own store, adapters/telegram/store.py, moves the rows to its table).
    ("""CREATE TABLE telegram_usernames (
            username TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL,
            bound REAL NOT NULL)""",),
    # A turn is stored as it happens ('open'), then 'done', or 'interrupted' if its process died.
    ("ALTER TABLE turns ADD COLUMN state TEXT NOT NULL DEFAULT 'done'",),
    # Each conversation's attachments (att_<number>), so ids stay unique across restarts.
    ("""CREATE TABLE attachments (
            conversation_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            size INTEGER NOT NULL,
            forwarded_from TEXT,
            created REAL NOT NULL,
            PRIMARY KEY (conversation_id, number))""",),
    # The language model a conversation chose (/model); none: ASSISTANT_LLM_MODEL.
    ("""CREATE TABLE conversation_models (
            conversation_id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            chosen REAL NOT NULL)""",),
    # The process an open turn belongs to (see :func:`process_token`): only a turn whose
    # process is gone is interrupted (NULL: stored before owners were, taken as gone).
    ("ALTER TABLE turns ADD COLUMN owner TEXT",),
    # A conversation's preferences by name (such as 'voice': off, auto or always); none: the default.
    ("""CREATE TABLE conversation_preferences (
            conversation_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (conversation_id, name))""",),
)
#: What an interrupted turn ends with in the history.
INTERRUPTED_NOTE = "(This turn was interrupted before it was answered: the assistant stopped.)"


def migrate(db: sqlite3.Connection) -> None:
    """Bring the database up to the latest schema version (safe with several processes). An
    up-to-date database is only read (so it opens on a full disk)."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
        return
    with transaction(db):  # the version is read again under the write lock
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for step in MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {max(version, len(MIGRATIONS))}")


@dataclass(frozen=True)
class StoredTurn:
    """One remembered turn: its messages, their estimated size in tokens, and its place in
    the conversation (0 for the first turn)."""

    messages: list[BaseMessage]
    tokens: int
    number: int

    @classmethod
    def of(cls, messages: Sequence[BaseMessage], number: int) -> StoredTurn:
        return cls(list(messages), estimate_tokens(messages), number)


class Memory:
    """Turns of every conversation in one SQLite file (WAL; safe to share between threads).

    Recent conversations are also kept parsed in memory, so a turn does not re-read and
    re-parse its history; this process is assumed to be the only writer of a conversation.
    """

    def __init__(self, path: Path | str) -> None:
        """Open (or create) the database, checked and brought up to date; :class:`StorageError`
        saying what to do when it cannot be opened, or is damaged."""
        self.path = Path(path)
        self._db = connect(self.path, migrate)
        self._lock = Guard(self.path)  # also says what a database error means, and what to do
        self._cache: OrderedDict[str, list[StoredTurn]] = OrderedDict()

    def turns(self, conversation_id: str) -> list[StoredTurn]:
        """The stored turns of a conversation (the latest ``MAX_TURNS_LOADED``), oldest first."""
        with self._lock:
            return list(self._cached(conversation_id))

    def begin_turn(self, conversation_id: str, messages: Sequence[BaseMessage]) -> int:
        """Store the start of a turn now (so a crash cannot lose it); returns its id for
        :meth:`save_turn` and :meth:`finish_turn`. An older turn of the conversation left open
        by a process that is gone is marked interrupted."""
        with self._lock:
            if self._interrupt(conversation_id):
                self._cache.pop(conversation_id, None)
            cursor = self._db.execute(
                "INSERT INTO turns (conversation_id, messages, created, state, owner) VALUES (?, ?, ?, 'open', ?)",
                (conversation_id, _dumps(messages), time.time(), process_token()))
            return int(cursor.lastrowid)

    def save_turn(self, turn_id: int, messages: Sequence[BaseMessage]) -> None:
        """Store the turn's messages so far (each tool result as it comes)."""
        with self._lock:
            self._db.execute("UPDATE turns SET messages = ? WHERE id = ?", (_dumps(messages), turn_id))

    def finish_turn(self, conversation_id: str, turn_id: int, messages: Sequence[BaseMessage]) -> None:
        """Store the turn's final messages; it joins the conversation's history."""
        with self._lock:
            turns = self._cached(conversation_id)
            self._db.execute("UPDATE turns SET messages = ?, state = 'done' WHERE id = ?",
                             (_dumps(messages), turn_id))
            turns.append(StoredTurn.of(messages, turns[-1].number + 1 if turns else 0))
            del turns[:-MAX_TURNS_LOADED]

    def recover_interrupted(self, conversation_id: str) -> list[str]:
        """Mark the conversation's turns left open by a process that is gone (it crashed or was
        killed) as interrupted; the user's messages of those turns (to tell the person). A turn
        another running process is still answering stays open. Call before the first turn."""
        with self._lock:
            texts = self._interrupt(conversation_id)
            if texts:
                self._cache.pop(conversation_id, None)
            return texts

    def open_conversations(self, prefix: str) -> list[str]:
        """Conversations (ids starting with ``prefix``) with a turn left open."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT conversation_id FROM turns WHERE state = 'open' "
                                    "AND substr(conversation_id, 1, ?) = ?", (len(prefix), prefix))
            return [row[0] for row in rows]

    def _interrupt(self, conversation_id: str) -> list[str]:
        """Close the conversation's open turns whose process is gone as interrupted; call with
        the lock held."""
        rows = self._db.execute("SELECT id, messages, owner FROM turns WHERE conversation_id = ? "
                                "AND state = 'open'", (conversation_id,)).fetchall()
        texts = []
        for turn_id, data, owner in rows:
            if not owner_is_gone(owner):
                continue
            messages = _loads(data, turn_id, self.path) or []
            answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
            closed: list[BaseMessage] = []
            for message in messages:
                closed.append(message)
                for call in getattr(message, "tool_calls", None) or ():
                    if call["id"] not in answered:
                        closed.append(ToolMessage(content='{"error":"interrupted before this tool finished"}',
                                                  tool_call_id=call["id"], name=call["name"]))
            closed.append(AIMessage(content=INTERRUPTED_NOTE))
            self._db.execute("UPDATE turns SET messages = ?, state = 'interrupted' WHERE id = ?",
                             (_dumps(closed), turn_id))
            texts.append(str(messages[0].content) if messages else "")
        return texts

    def add_attachment(self, conversation_id: str, kind: str, path: Path, name: str, size: int,
                       forwarded_from: str | None = None) -> Attachment:
        """Store a new attachment of the conversation under the next free id (``att_<n>``,
        unique in the conversation however many processes share the database). The first
        one comes after any id its turns mention (turns stored before ids were)."""
        with self._lock, transaction(self._db):
            (last,) = self._db.execute("SELECT MAX(number) FROM attachments WHERE conversation_id = ?",
                                       (conversation_id,)).fetchone()
            if last is None:
                rows = self._db.execute("SELECT messages FROM turns WHERE conversation_id = ? "
                                        "AND instr(messages, ?) > 0", (conversation_id, ATTACHMENT_PREFIX))
                last = max((int(number) for (data,) in rows for number in _MENTIONED_ID.findall(data)),
                           default=0)
            self._db.execute("INSERT INTO attachments (conversation_id, number, kind, path, name, size, "
                             "forwarded_from, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (conversation_id, last + 1, kind, str(path), name, size, forwarded_from,
                              time.time()))
        return Attachment(f"{ATTACHMENT_PREFIX}{last + 1}", kind, Path(path), name, size, forwarded_from)

    def attachment(self, conversation_id: str, attachment_id: str) -> Attachment | None:
        """The conversation's attachment with this id, or None."""
        number = re.fullmatch(f"{ATTACHMENT_PREFIX}([0-9]{{1,18}})", attachment_id)
        if number is None:
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments "
                                   "WHERE conversation_id = ? AND number = ?",
                                   (conversation_id, int(number[1]))).fetchone()
        return None if row is None else _attachment(row)

    def attachments(self, conversation_id: str) -> list[Attachment]:
        """The conversation's attachments, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments "
                                    "WHERE conversation_id = ? ORDER BY number", (conversation_id,)).fetchall()
        return [_attachment(row) for row in rows]

    def count_attachments(self, conversation_id: str) -> int:
        """How many attachments the conversation has (one indexed count, no rows read)."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM attachments WHERE conversation_id = ?",
                                        (conversation_id,)).fetchone()
        return count

    def conversation_model(self, conversation_id: str) -> str | None:
        """The model the conversation chose, or None (the default)."""
        with self._lock:
            row = self._db.execute("SELECT model FROM conversation_models WHERE conversation_id = ?",
                                   (conversation_id,)).fetchone()
        return None if row is None else row[0]

    def set_conversation_model(self, conversation_id: str, model: str | None) -> None:
        """Choose the conversation's model (None: back to the default)."""
        with self._lock:
            if model is None:
                self._db.execute("DELETE FROM conversation_models WHERE conversation_id = ?",
                                 (conversation_id,))
            else:
                self._db.execute("INSERT OR REPLACE INTO conversation_models (conversation_id, model, chosen) "
                                 "VALUES (?, ?, ?)", (conversation_id, model, time.time()))

    def preference(self, conversation_id: str, name: str) -> str | None:
        """The conversation's preference ``name`` (None: it has not chosen; the default holds)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM conversation_preferences WHERE conversation_id = ? "
                                   "AND name = ?", (conversation_id, name)).fetchone()
        return None if row is None else row[0]

    def set_preference(self, conversation_id: str, name: str, value: str) -> None:
        """Keep the conversation's preference ``name`` (across restarts and /reset)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO conversation_preferences (conversation_id, name, value) "
                             "VALUES (?, ?, ?)", (conversation_id, name, value))

    def clear(self, conversation_id: str) -> None:
        """Forget the conversation's turns and attachments (its chosen model stays)."""
        with self._lock, transaction(self._db):
            self._db.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,))
            self._db.execute("DELETE FROM attachments WHERE conversation_id = ?", (conversation_id,))
            self._cache.pop(conversation_id, None)

    def _cached(self, conversation_id: str) -> list[StoredTurn]:
        """The conversation's parsed turns (loaded on first use); call with the lock held."""
        turns = self._cache.get(conversation_id)
        if turns is None:
            rows = self._db.execute(
                "SELECT messages, id FROM turns WHERE conversation_id = ? AND state != 'open' "
                "ORDER BY id DESC LIMIT ?",
                (conversation_id, MAX_TURNS_LOADED)).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ? AND state != 'open'",
                                     (conversation_id,)).fetchone()[0]
            first = total - len(rows)  # the number of the oldest turn loaded
            turns = [StoredTurn.of(_loads(row[0], row[1], self.path) or [], first + i)
                     for i, row in enumerate(reversed(rows))]
            self._cache[conversation_id] = turns
            while len(self._cache) > CACHED_CONVERSATIONS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(conversation_id)
        return turns

    def close(self) -> None:
        with self._lock:
            self._db.close()


#: What every attachment id starts with (then its number in the conversation).
ATTACHMENT_PREFIX = "att_"
_ATTACHMENT_COLUMNS = "number, kind, path, name, size, forwarded_from"
_MENTIONED_ID = re.compile(rf"\b{ATTACHMENT_PREFIX}([0-9]{{1,18}})\b")


def _attachment(row: tuple) -> Attachment:
    number, kind, path, name, size, forwarded_from = row
    return Attachment(f"{ATTACHMENT_PREFIX}{number}", kind, Path(path), name, size, forwarded_from)


def _loads(data: str, turn_id: int, path: Path) -> list[BaseMessage] | None:
    """A stored turn's messages; None (and a warning in the log) when its record is damaged,
    so that one unreadable turn leaves the rest of the conversation usable."""
    try:
        return messages_from_dict(json.loads(data))
    except UNREADABLE as exc:
        log.warning("The conversation database %s is damaged: stored turn %s cannot be read (%s); "
                    "it is left out of the history. `assistant doctor` checks the database.",
                    path, turn_id, exc)
        return None


def _dumps(messages: Sequence[BaseMessage]) -> str:
    return json.dumps(messages_to_dict(list(messages)), ensure_ascii=False)


def estimate_tokens(messages: Sequence[BaseMessage]) -> int:
    """A cheap token estimate: characters / 4 plus a little per message."""
    total = 0
    for message in messages:
        chars = len(message.content) if isinstance(message.content, str) else len(str(message.content))
        for call in getattr(message, "tool_calls", None) or ():
            chars += len(call["name"]) + len(json.dumps(call["args"], ensure_ascii=False))
        total += chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD
    return total


def fit_history(turns: Sequence[StoredTurn], budget_tokens: int) -> list[BaseMessage]:
    """The history that fits ``budget_tokens``, oldest first, in whole turns (a tool call
    stays with its results).

    When it does not all fit, the oldest turns are dropped in whole blocks of
    :data:`HISTORY_BLOCK_TURNS` (by their number in the conversation), so the history starts
    at the same turn in request after request until another block must go; only when even
    the newest block does not fit is it cut turn by turn. A note in their place, within
    :data:`DROPPED_NOTE_TOKENS`, says how many turns were left out and what they were about.
    """
    if sum(turn.tokens for turn in turns) <= budget_tokens:
        return [message for turn in turns for message in turn.messages]
    room = budget_tokens - DROPPED_NOTE_TOKENS
    if room < 0:
        return []
    after = list(accumulate(reversed([turn.tokens for turn in turns]), initial=0))[::-1]
    fits = [index for index, tokens in enumerate(after) if tokens <= room]  # turns[index:] fit
    on_block = [index for index in fits if index < len(turns)
                and turns[index].number % HISTORY_BLOCK_TURNS == 0]
    start = (on_block or fits)[0]
    left_out = turns[start].number if start < len(turns) else turns[-1].number + 1
    note = _dropped_note(turns[:start], left_out)
    return [note, *(message for turn in turns[start:] for message in turn.messages)]


def _dropped_note(dropped: Sequence[StoredTurn], left_out: int) -> HumanMessage:
    """How many turns were left out and what the latest of them were about (the start of each
    user message), within :data:`DROPPED_NOTE_TOKENS`."""
    header = (f"[Memory note: {left_out} earlier turn(s) of this conversation were left out "
              f"to fit the context window. The user had written:")
    topics: list[str] = []
    budget_chars = (DROPPED_NOTE_TOKENS - MESSAGE_OVERHEAD) * CHARS_PER_TOKEN - len(header) - 1
    for turn in reversed(dropped):
        first = next((m for m in turn.messages if isinstance(m, HumanMessage)), None)
        if first is None:
            continue
        text = " ".join(str(first.content).split())
        topic = f' "{text[:80]}{"…" if len(text) > 80 else ""}"'
        if sum(map(len, topics)) + len(topic) > budget_chars:
            break
        topics.insert(0, topic)
    return HumanMessage(content=header + ";".join(topics) + "]")
