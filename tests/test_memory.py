"""SQLite conversation memory and the context budget."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from assistant.memory import MIGRATIONS, Memory, StoredTurn, estimate_tokens, fit_history


def turn(user: str, answer: str = "ok") -> list:
    return [HumanMessage(content=user), AIMessage(content=answer)]


def stored(user: str) -> StoredTurn:
    return StoredTurn.of(turn(user))


def test_turns_persist_across_instances_in_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "memory.sqlite3"
    memory = Memory(path)
    call = {"name": "image", "args": {"attachment_id": "att_1"}, "id": "c1", "type": "tool_call"}
    memory.append("a", [HumanMessage(content="фото"), AIMessage(content="", tool_calls=[call]),
                        ToolMessage(content='{"tool":"image"}', tool_call_id="c1", name="image"),
                        AIMessage(content="Кошка.")])
    memory.append("b", turn("other"))
    memory.close()

    reopened = Memory(path)
    (turn_a,) = reopened.turns("a")
    stored = turn_a.messages
    assert turn_a.tokens == estimate_tokens(stored)
    assert [m.content for m in stored] == ["фото", "", '{"tool":"image"}', "Кошка."]
    assert stored[1].tool_calls[0]["args"] == {"attachment_id": "att_1"} and stored[2].name == "image"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    reopened.clear("a")
    assert reopened.turns("a") == [] and len(reopened.turns("b")) == 1


def test_appends_from_many_threads(tmp_path: Path) -> None:
    memory = Memory(tmp_path / "m.sqlite3")

    def work(n: int) -> None:
        for i in range(20):
            memory.append(f"c{n}", turn(f"{n}-{i}"))
            memory.turns(f"c{n}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(memory.turns(f"c{n}")) for n in range(4)] == [20, 20, 20, 20]
    assert [t.messages[0].content for t in memory.turns("c2")] == [f"2-{i}" for i in range(20)]
    assert [t.messages[0].content for t in Memory(tmp_path / "m.sqlite3").turns("c2")] == [f"2-{i}" for i in range(20)]


def test_fit_history_keeps_newest_turns_and_notes_the_dropped() -> None:
    turns = [stored(f"question {i} " + "x" * 400) for i in range(5)]
    per_turn = turns[0].tokens

    history = fit_history(turns, budget_tokens=per_turn * 2 + 60)

    assert history[0].content.startswith("[Memory note: 3 earlier turn(s)")
    assert '"question 2 xxx' in history[0].content  # what the dropped turns were about
    assert [m.content[:10] for m in history[1::2]] == ["question 3", "question 4"]
    assert estimate_tokens(history) <= per_turn * 2 + 60


def test_fit_history_everything_fits_or_nothing() -> None:
    turns = [stored("short"), stored("also short")]
    assert fit_history(turns, 10_000) == [m for t in turns for m in t.messages]
    assert fit_history(turns, 0) == []


def test_token_estimate_counts_tool_calls() -> None:
    plain = AIMessage(content="")
    with_call = AIMessage(content="", tool_calls=[{"name": "sentiment", "args": {"text": "a" * 400},
                                                   "id": "1", "type": "tool_call"}])
    assert estimate_tokens([with_call]) - estimate_tokens([plain]) >= 100


def test_a_database_from_before_versioning_keeps_its_conversations(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL,
                            messages TEXT NOT NULL, created REAL NOT NULL);
        CREATE INDEX turns_by_conversation ON turns (conversation_id, id);""")
    old.execute("INSERT INTO turns (conversation_id, messages, created) VALUES (?, ?, 0)",
                ("a", '[{"type": "human", "data": {"content": "from the old days", "type": "human"}}]'))
    old.commit()
    old.close()

    memory = Memory(path)
    assert [t.messages[0].content for t in memory.turns("a")] == ["from the old days"]
    assert memory.bind_username("Carol", 4001) == 4001
    assert memory.bind_username("carol", 4002) == 4001  # the first id seen keeps the name
    memory.close()
    again = Memory(path)  # opening an up-to-date database changes nothing
    assert again.username_bindings() == {"carol": 4001}
    assert len(again.turns("a")) == 1
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)
