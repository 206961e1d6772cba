"""Real small LLMs (../shared/llm/mini_ollama.py) through our reply contract and through the
plain LangChain tool loop, on the same scripted turns, in one run.

Per model and loop: clean replies %, grounded % (result line right; the model's own words
state the top result), reply language = user language %, model calls per turn, prompt tokens
evaluated and reused prefix tokens per call (from the server's log), new prompt tokens per turn
(median; text turns from the second on, and attachment turns; the first turn's), tools run on
small talk, the estimated wait before the first word at 30 and at 300 prompt tokens/s (a CPU,
a laptop GPU: the median turn's new prompt tokens read at that speed), time to first character
the person sees (of the model's words, or the measured result lines, which channels show as
soon as the tools have run), also for turns without attachments alone, total time per turn.
``llama3.1:8b`` is Qwen's weights rendered with Ollama's llama3.1 template; loop ``native``
runs ours with ASSISTANT_TOOL_CALLING=native on it (tools sent natively, as before issue 20).
Usage: bench_llm.py [--models NAME ...] [--loops ours native plain] [--repeat N] [--script full|issue20]
[--api ollama openai] (``openai``: our loop on the same Qwen GGUF also behind llama-cpp-python's
OpenAI-compatible server, ASSISTANT_LLM_API=openai; it logs no prompt tokens: those columns say "–")
(``--repeat 3``: the script three times over in one conversation, which outgrows a 4,096-token
window: how each loop fares once history must be dropped.)
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import MEDIA, ROOT, SHARED

from tests.model_builders import build_models_dir
from tests.real_llm import _FILES, LLAMA31, QWEN, SMOLLM, start_openai_server, start_server

LEAKS = re.compile(r'<tool_call>|</?\|?im_(start|end)|"(name|arguments|parameters|tool_calls|outputs|labels)"\s*:'
                   r"|\(No answer")
#: (text, attachment or None): English and Russian; attachments, a text to judge, small talk, follow-ups.
TURNS = [
    ("What do you hear in this recording?", "audio/siren.m4a"),
    ("Привет! Как дела?", None),
    ("Что на этом фото?", "images/ext_tabby_cat.jpg"),
    ("Какая тональность у этого отзыва: «Ужасный сервис, больше никогда не приду»?", None),
    ("What was in the recording I sent earlier?", None),
    ("What sounds are in this clip?", "audio/us8k_dog_bark_100032-3-0-0.wav"),
    ("Describe att_9 for me.", None),
    ("Что слышно на этой записи?", "audio/us8k_siren_102853-8-0-0.wav"),
    ("Thanks! What can you do?", None),
    ("What is in this photo?", "images/inet_school_bus.jpg"),
    ("Is this review positive: 'Great film, I loved every minute'?", None),
    ("", "audio/voice_note_ru.oga"),  # a voice note without a caption: answered from its words
    ("Что я сказал в том голосовом сообщении?", None),
    ("Спасибо, пока!", None),
]
#: Issue 20's session (``--script issue20``): seven turns, three of them needing no tool.
ISSUE20_TURNS = [
    ("What is in this photo?", "images/ext_tabby_cat.jpg"),
    ("Thanks! Tell me a fun fact about it.", None),
    ("What do you hear in this recording?", "audio/siren.m4a"),
    ("Какая тональность у этого отзыва: «Ужасный сервис, больше никогда не приду»?", None),
    ("How are you today?", None),
    ("What was in that recording again?", None),
    ("Спасибо, пока!", None),
]
#: The turns that need no tool at all.
SMALL_TALK = {"Привет! Как дела?", "Thanks! What can you do?", "Спасибо, пока!", "How are you today?",
              "Thanks! Tell me a fun fact about it."}


def cyrillic(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum("а" <= c.lower() <= "я" or c in "ёЁ" for c in letters) / len(letters) > 0.3


def log_entries(log: Path, start: int) -> list[dict]:
    lines = log.read_text().splitlines()[start:] if log.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def run_ours(url: str, model: str, db: Path, log: Path, turns: list[tuple[str, str | None]],
             tool_calling: str = "auto", api: str = "ollama") -> list[dict]:
    from assistant.agent import build_agent
    from assistant.config import Settings
    from assistant.turns import Turn

    server = {"ASSISTANT_LLM_API": "openai", "ASSISTANT_LLM_BASE_URL": url} if api == "openai" else {"OLLAMA_HOST": url}
    settings = Settings.from_env({**os.environ, **server, "ASSISTANT_LLM_MODEL": model, "ASSISTANT_DB": str(db),
                                  "ASSISTANT_LLM_NUM_CTX": "4096", "ASSISTANT_TOOL_CALLING": tool_calling})
    agent = build_agent(settings)
    agent.warm_up()
    rows = []
    for text, file in turns:
        attachments = [agent.attachments("b").register(MEDIA / file)] if file else []
        seen = len(log.read_text().splitlines()) if log.exists() else 0
        first: list[float] = []  # when the person first sees something of the reply

        def seen_now(*shown: object) -> None:
            if not first and any(shown):
                first.append(time.perf_counter())

        start = time.perf_counter()
        reply = agent.respond(Turn("b", text, attachments),
                              on_token=lambda t: seen_now(t.strip()), on_results=seen_now)
        total = time.perf_counter() - start
        rows.append(dict(text=text, file=file, reply=reply.text, results=reply.results, total=total, ours=True,
                         ttft=(first[0] - start) if first else total, calls=log_entries(log, seen)))
    return rows


def run_plain(url: str, model: str, native: bool, log: Path, turns: list[tuple[str, str | None]]) -> list[dict]:
    """The LangChain docs' loop: bind_tools, run the calls, ask again, print the answer."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_ollama import ChatOllama

    from assistant import prompts
    from assistant.attachments import AttachmentStore
    from assistant.config import Settings
    from assistant.runtime import build_tools
    from tools.base import ToolContext

    tools = build_tools(Settings.from_env())
    llm = ChatOllama(model=model, base_url=url, num_ctx=4096)
    if native:
        llm = llm.bind_tools(tools.schemas())
    store = AttachmentStore(None)
    ctx = ToolContext(attachments=store, output_dir=Path(tempfile.mkdtemp()))
    history = [SystemMessage(content=prompts.load("system"))]
    rows = []
    for text, file in turns:
        content = text
        if file:
            attachment = store.register(MEDIA / file)
            content += f"\n\nAttachments: {attachment.describe()}"
        history.append(HumanMessage(content=content))
        seen = len(log.read_text().splitlines()) if log.exists() else 0
        start, first, answer = time.perf_counter(), None, ""
        for _ in range(2):
            full = None
            for chunk in llm.stream(history):
                if chunk.content and first is None:
                    first = time.perf_counter()
                full = chunk if full is None else full + chunk
            history.append(full)
            if not full.tool_calls:
                answer = str(full.content)
                break
            for call in full.tool_calls:
                try:
                    result = json.dumps(tools.get(call["name"]).call(call["args"], ctx).to_json())
                except Exception as exc:  # noqa: BLE001 - the baseline reports what it got
                    result = json.dumps({"error": str(exc)})
                history.append(ToolMessage(content=result, tool_call_id=call["id"]))
        total = time.perf_counter() - start
        rows.append(dict(text=text, file=file, reply=answer, results=[], total=total,
                         ttft=(first - start) if first else total, calls=log_entries(log, seen)))
    return rows


def new_tokens(row: dict) -> int:
    """The prompt tokens the server evaluated anew over one turn's requests (beyond the prefix
    it kept from the request before)."""
    return sum(c["prompt_tokens"] - c["reused_prefix_tokens"] for c in row["calls"]
               if c.get("path") == "/api/chat" and c.get("prompt_tokens") is not None)


def ran_tools(row: dict) -> bool:
    """Whether a tool ran in the turn: a result line (ours) or a call the model made (the plain
    loop runs every call)."""
    return bool(row["results"]) or (not row.get("ours") and any(c.get("tool_calls") for c in row["calls"]))


def bench_openai_api(work: Path, llm_dir: Path, turns: list[tuple[str, str | None]]) -> list[dict]:
    """Our loop on the Qwen GGUF behind llama-cpp-python's OpenAI-compatible server (the row
    beside the Ollama API's; the truth is the tools' own top results, as there)."""
    process, url = start_openai_server(os.environ.get("ASSISTANT_TEST_LLM_PYTHON", sys.executable), llm_dir,
                                       work / "openai-server.stderr")
    try:
        rows = run_ours(url, QWEN, work / "openai.sqlite3", work / "no-log.jsonl", turns, api="openai")
    finally:
        process.terminate()
    truth = {r["file"]: _fact(r["results"][0]) for r in rows if r["file"]}
    (work / "qwen-openai.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return [{"model": QWEN, "loop": "ours, OpenAI API", "turns": len(rows), **summarise(rows, truth)}]


def summarise(rows: list[dict], truth: dict[str, str]) -> dict[str, object]:
    attached = [r for r in rows if r["file"]]
    calls = [c for r in rows for c in r["calls"] if c.get("prompt_tokens") is not None]
    later = [r["ttft"] for r in rows[1:]]
    later_text = [r["ttft"] for r in rows[1:] if not r["file"]]
    new_text = [new_tokens(r) for r in rows[1:] if not r["file"]]
    new_attached = [new_tokens(r) for r in attached]
    new_later = statistics.median(new_tokens(r) for r in rows[1:])
    return {
        "clean %": round(100 * sum(bool(r["reply"].strip()) and not LEAKS.search(r["reply"]) for r in rows) / len(rows)),
        "grounded line %": round(100 * sum(any(_fact(line) == truth[r["file"]] for line in r["results"])
                                           for r in attached) / len(attached)),
        "grounded words %": round(100 * sum(truth[r["file"]].lower() in r["reply"].lower() for r in attached)
                                  / len(attached)),
        "language %": round(100 * sum(cyrillic(r["text"]) == cyrillic(r["reply"]) for r in rows) / len(rows)),
        "calls/turn": round(len(calls) / len(rows), 2) if calls else "–",
        "prompt tok/call": round(statistics.mean(c["prompt_tokens"] - c["reused_prefix_tokens"] for c in calls))
        if calls else "–",
        "reused tok/call": round(statistics.mean(c["reused_prefix_tokens"] for c in calls)) if calls else "–",
        "new tok, turn 1": new_tokens(rows[0]),
        "new tok/text turn": round(statistics.median(new_text)),
        "new tok/attachment turn": round(statistics.median(new_attached)),
        "tools on small talk": f"{sum(ran_tools(r) for r in rows if r['text'] in SMALL_TALK)}"
                               f"/{sum(r['text'] in SMALL_TALK for r in rows)}",
        "wait @30 tok/s": f"{new_later / 30:.1f} s",
        "wait @300 tok/s": f"{new_later / 300:.1f} s",
        "ttft 1st s": round(rows[0]["ttft"], 1),
        "ttft 2+ s": round(statistics.median(later), 1),
        "ttft 2+ text s": round(statistics.median(later_text), 1),
        "turn s": round(statistics.median(r["total"] for r in rows), 1),
    }


def _fact(line: str) -> str:
    """The fact a result line leads with: the top label, or a transcript's first word."""
    quoted = re.search(r"\u201c(\w+)", line)
    if line.startswith("speech") and quoted:
        return quoted.group(1)
    parts = line.split(" · ")
    return parts[1].split(" ")[0] if len(parts) > 1 else ""


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=(QWEN, SMOLLM, LLAMA31), default=[QWEN, SMOLLM, LLAMA31])
    parser.add_argument("--loops", nargs="+", choices=("ours", "native", "plain"), default=["ours", "native", "plain"])
    parser.add_argument("--repeat", type=int, default=1, help="run the scripted turns N times in one conversation")
    parser.add_argument("--api", nargs="+", choices=("ollama", "openai"), default=["ollama"],
                        help="openai: our loop on Qwen also through an OpenAI-compatible server")
    parser.add_argument("--script", choices=("full", "issue20"), default="full",
                        help="the 14 scripted turns, or issue 20's seven")
    args = parser.parse_args()
    turns = ISSUE20_TURNS if args.script == "issue20" else TURNS
    work = Path(tempfile.mkdtemp(prefix="bench_llm_"))
    models_dir = build_models_dir(work / "models", SHARED / "models")


    os.environ.update(ASSISTANT_MODELS_DIR=str(models_dir), ASSISTANT_DEVICE="cpu")
    llm_dir = Path(os.environ.get("ASSISTANT_TEST_LLM_DIR", Path.home() / ".cache" / "assistant-test-llm"))
    log = work / "requests.jsonl"
    process, url = start_server(os.environ.get("ASSISTANT_TEST_LLM_PYTHON", sys.executable),
                                SHARED / "llm" / "mini_ollama.py", llm_dir, log)
    try:
        table = []
        for model in args.models:
            slug = model.replace(":", "_")
            runs = {"ours": lambda: run_ours(url, model, work / f"{slug}.sqlite3", log, turns * args.repeat)}
            if "native" in args.loops and model == LLAMA31:  # as before issue 20: the tools sent natively
                runs["ours, native"] = lambda: run_ours(url, model, work / f"{slug}-native.sqlite3", log,
                                                        turns * args.repeat, tool_calling="native")
            if "plain" in args.loops:
                runs["plain LangChain"] = lambda: run_plain(url, model, ":tools" in _FILES[model], log,
                                                            turns * args.repeat)
            truth: dict[str, str] = {}
            for name, run in runs.items():
                rows = run()
                truth = truth or {r["file"]: _fact(r["results"][0]) for r in rows if r["file"]}  # ours: first
                (work / f"{slug}-{name.split()[-1]}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
                parts = [rows[:len(turns)], rows] if args.repeat > 1 else [rows]  # the script once, then all
                table += [{"model": model, "loop": name, "turns": len(part), **summarise(part, truth)}
                          for part in parts]
                print(json.dumps(table[-1], ensure_ascii=False), file=sys.stderr, flush=True)  # as it comes
        if "openai" in args.api and QWEN in args.models:
            table += bench_openai_api(work, llm_dir, turns * args.repeat)
        keys = list(table[0])
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for row in table:
            print("| " + " | ".join(str(row[k]) for k in keys) + " |")
        print(f"(replies and calls in {work})", file=sys.stderr)
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
