"""SQLite conversation memory and the context budget."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from assistant.memory import DROPPED_NOTE_TOKENS, MIGRATIONS, Memory, StoredTurn, estimate_tokens, fit_history


def turn(user: str, answer: str = "ok") -> list:
    return [HumanMessage(content=user), AIMessage(content=answer)]


def store(memory: Memory, conversation_id: str, messages: list) -> None:
    """One complete turn, stored as the agent stores it (begun, then finished)."""
    memory.finish_turn(conversation_id, memory.begin_turn(conversation_id, messages[:1]), messages)


def stored(user: str, number: int = 0) -> StoredTurn:
    return StoredTurn.of(turn(user), number)


def test_turns_persist_across_instances_in_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "memory.sqlite3"
    memory = Memory(path)
    call = {"name": "image", "args": {"attachment_id": "att_1"}, "id": "c1", "type": "tool_call"}
    store(memory, "a", [HumanMessage(content="фото"), AIMessage(content="", tool_calls=[call]),
                        ToolMessage(content='{"tool":"image"}', tool_call_id="c1", name="image"),
                        AIMessage(content="Кошка.")])
    store(memory, "b", turn("other"))
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
            store(memory, f"c{n}", turn(f"{n}-{i}"))
            memory.turns(f"c{n}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(memory.turns(f"c{n}")) for n in range(4)] == [20, 20, 20, 20]
    assert [t.messages[0].content for t in memory.turns("c2")] == [f"2-{i}" for i in range(20)]
    assert [t.messages[0].content for t in Memory(tmp_path / "m.sqlite3").turns("c2")] == [f"2-{i}" for i in range(20)]


def test_fit_history_drops_old_turns_in_blocks_so_the_prefix_stays_the_same() -> None:
    turns = [stored(f"question {i} " + "x" * 400, i) for i in range(14)]
    per_turn = turns[0].tokens
    budget = DROPPED_NOTE_TOKENS + per_turn * 5  # the note and five turns

    histories = {n: fit_history(turns[:n], budget) for n in range(1, 15)}

    assert histories[5] == [m for t in turns[:5] for m in t.messages]  # all fit
    asked = {n: [m.content[:11].strip() for m in history[1::2]] for n, history in histories.items()}
    assert asked[6] == ["question 4", "question 5"]  # a whole block (0-3) went, not just turn 0
    assert asked[9] == ["question 4", "question 5", "question 6", "question 7", "question 8"]
    assert asked[10] == ["question 8", "question 9"]  # the next block (4-7)
    for n in (6, 7, 8):  # the same start while the block holds: each request extends the last
        assert histories[n + 1][:len(histories[n])] == histories[n]
    assert histories[10][0].content.startswith("[Memory note: 8 earlier turn(s)")
    assert '"question 7 xxx' in histories[10][0].content  # what the dropped turns were about
    assert all(estimate_tokens(history) <= budget for history in histories.values())
    assert len(histories[10][0].content) // 4 + 8 <= DROPPED_NOTE_TOKENS


def test_fit_history_keeps_a_turn_whole_and_cuts_turn_by_turn_only_when_a_block_is_too_big() -> None:
    call = {"name": "image", "args": {"attachment_id": "att_1"}, "id": "c1", "type": "tool_call"}
    with_tool = StoredTurn.of([HumanMessage(content="photo"), AIMessage(content="", tool_calls=[call]),
                               ToolMessage(content="x" * 400, tool_call_id="c1", name="image"),
                               AIMessage(content="A cat.")], 1)
    turns = [stored("h" * 800, 0), with_tool, stored("y" * 400, 2), stored("z" * 400, 3)]
    budget = DROPPED_NOTE_TOKENS + turns[2].tokens + turns[3].tokens  # no block start fits

    history = fit_history(turns, budget)

    assert [m.content[:1] for m in history[1:]] == ["y", "o", "z", "o"]
    assert history[0].content.startswith("[Memory note: 2 earlier turn(s)")
    history = fit_history(turns, budget + with_tool.tokens)  # the call and its result come together
    assert [type(m).__name__ for m in history[1:5]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert history[0].content.startswith("[Memory note: 1 earlier turn(s)")


def test_fit_history_everything_fits_or_nothing() -> None:
    turns = [stored("short", 0), stored("also short", 1)]
    assert fit_history(turns, 10_000) == [m for t in turns for m in t.messages]
    assert fit_history(turns, 0) == []


def test_turns_are_numbered_from_the_conversations_first(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.sqlite3"
    memory = Memory(path)
    for i in range(5):
        store(memory, "a", turn(f"q{i}"))
    turn_id = memory.begin_turn("a", [HumanMessage(content="q5")])
    memory.finish_turn("a", turn_id, turn("q5"))
    assert [t.number for t in memory.turns("a")] == [0, 1, 2, 3, 4, 5]

    monkeypatch.setattr("assistant.memory.MAX_TURNS_LOADED", 3)
    reopened = Memory(path)
    assert [(t.number, t.messages[0].content) for t in reopened.turns("a")] == [(3, "q3"), (4, "q4"), (5, "q5")]
    store(reopened, "a", turn("q6"))
    assert [t.number for t in reopened.turns("a")] == [4, 5, 6]


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
    memory.close()
    again = Memory(path)  # opening an up-to-date database changes nothing
    assert len(again.turns("a")) == 1
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)


def test_attachments_keep_their_ids_across_instances_and_reset_forgets_them(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    memory = Memory(path)
    first = memory.add_attachment("a", "image", tmp_path / "cat.jpg", "cat.jpg", 123)
    second = memory.add_attachment("a", "voice", tmp_path / "v.oga", "v.oga", 9, forwarded_from="Bob")
    other = memory.add_attachment("b", "audio", tmp_path / "s.wav", "s.wav", 5)
    assert (first.id, second.id, other.id) == ("att_1", "att_2", "att_1")
    memory.close()

    reopened = Memory(path)
    assert reopened.attachment("a", "att_2") == second  # kind, path, name, size, forwarded_from
    assert reopened.attachments("a") == [first, second]
    assert (reopened.count_attachments("a"), reopened.count_attachments("none")) == (2, 0)
    assert reopened.attachment("a", "att_3") is None and reopened.attachment("a", "2") is None
    assert reopened.attachment("a", "att_٢") is None  # only ASCII digits
    assert reopened.add_attachment("a", "video", tmp_path / "c.mp4", "c.mp4", 7).id == "att_3"

    store(reopened, "a", turn("photo"))
    reopened.clear("a")
    assert reopened.attachments("a") == [] and reopened.turns("a") == []
    assert reopened.attachments("b") == [other]


def test_conversation_model_is_kept_and_survives_reset(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    memory = Memory(path)
    assert memory.conversation_model("a") is None
    memory.set_conversation_model("a", "llama3:latest")
    memory.set_conversation_model("a", "qwen2.5:7b")
    memory.clear("a")
    memory.close()
    reopened = Memory(path)
    assert reopened.conversation_model("a") == "qwen2.5:7b" and reopened.conversation_model("b") is None
    reopened.set_conversation_model("a", None)
    assert reopened.conversation_model("a") is None


def database_of_version(path: Path, version: int) -> sqlite3.Connection:
    """A database at ``path`` made with the schema of ``version`` (an older release's), open."""
    old = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:version]:
        for statement in step:
            old.execute(statement)
    old.execute(f"PRAGMA user_version = {version}")
    return old


def test_a_database_of_the_previous_version_upgrades_and_keeps_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    old = database_of_version(path, 3)  # the schema before attachments were stored
    old.execute("INSERT INTO turns (conversation_id, messages, created, state) VALUES (?, ?, 0, 'done')",
                ("a", '[{"type": "human", "data": {"content": "photo att_1", "type": "human"}}]'))
    old.close()

    memory = Memory(path)
    assert [t.messages[0].content for t in memory.turns("a")] == ["photo att_1"]
    # Ids already mentioned in the conversation are not given again.
    assert memory.add_attachment("a", "image", tmp_path / "x.jpg", "x.jpg", 1).id == "att_2"
    assert memory.add_attachment("fresh", "image", tmp_path / "x.jpg", "x.jpg", 1).id == "att_1"
    memory.set_conversation_model("a", "llama3:latest")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
