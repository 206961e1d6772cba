"""The tool-calling strategy per model (issue 20): chosen from where the model's chat template
writes the tool schemas (Ollama's real templates in ``tests/fixtures/templates``), the warm
prefix, every request of a turn extending the previous one, and no tool run on small talk —
through the real Ollama client against the scripted fake Ollama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.llm.ollama import OllamaLLM
from assistant.llm.strategy import LAST_MESSAGE, SYSTEM_BLOCK, choose, tools_placement
from assistant.turns import Turn
from tests.fake_ollama import TOOLS, FakeOllama, answer, tool_call
from tests.test_ollama_client import agent_for, settings_for  # noqa: F401 - agent_for: a fixture

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.gotmpl").read_text(encoding="utf-8")


@pytest.mark.parametrize(("name", "placement"), [
    ("llama3.1", LAST_MESSAGE), ("llama3.2", LAST_MESSAGE), ("mistral", LAST_MESSAGE),
    ("qwen2.5", SYSTEM_BLOCK), ("qwen3", SYSTEM_BLOCK), ("hermes3", SYSTEM_BLOCK)])
def test_where_ollama_s_templates_write_the_tools(name: str, placement: str) -> None:
    assert tools_placement(template(name)) == placement
    assert choose("auto", template(name), TOOLS).native == (placement == SYSTEM_BLOCK)


def test_the_strategy_without_a_template_without_tools_and_when_set() -> None:
    assert choose("auto", None, None).native  # an OpenAI-compatible server: native by default
    assert choose("auto", "{{ .Prompt }}", TOOLS).native  # a template that says nothing of tools
    assert not choose("auto", template("qwen2.5"), ["completion"]).native  # no tools capability
    assert choose("native", template("llama3.1"), TOOLS).native
    assert not choose("structured", template("qwen2.5"), TOOLS).native
    assert "last user message" in choose("auto", template("llama3.1"), TOOLS).reason


def test_the_setting_is_validated() -> None:
    assert Settings.from_env({"ASSISTANT_TOOL_CALLING": " Structured "}).tool_calling == "structured"
    assert Settings.from_env({}).tool_calling == "auto"
    _, problems = Settings.read({"ASSISTANT_TOOL_CALLING": "json"})
    assert problems == ["ASSISTANT_TOOL_CALLING='json' (unknown mode): allowed is auto | native | structured"]


def test_decided_once_per_model_from_api_show(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    fake_ollama.templates["llama3.1:8b"] = template("llama3.1")
    llm = OllamaLLM(settings_for(fake_ollama.url, tmp_path))

    assert not llm.tool_calling().native and not llm.tool_calling().native
    assert len([r for r in fake_ollama.requests if r.path == "/api/show"]) == 1
    status = llm.status()
    assert status.tool_calling == "structured" and "last user message" in status.tool_calling_reason
    forced = OllamaLLM(settings_for(fake_ollama.url, tmp_path, tool_calling="native"))
    assert forced.tool_calling().native and forced.status().tool_calling == "native"


def test_llama3_template_reads_each_prompt_once(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    """Under llama3.1's template: no ``tools`` in any request (they would be re-read in the
    last message of each); the system prompt lists them and is read once, at warm-up; each
    request of a turn extends the previous one (the decision's instruction alone is replaced),
    and the next turn extends the last; small talk makes one request and runs no tool."""
    fake_ollama.templates["llama3.1:8b"] = template("llama3.1")
    agent = agent_for(settings_for(fake_ollama.url, tmp_path))
    decision = {"tool_calls": [{"name": "sentiment", "arguments": {"text": "прекрасно"}}]}
    fake_ollama.script += [answer(json.dumps(decision, ensure_ascii=False)), answer('{"tool_calls": []}'),
                           answer("Позитивно."), answer("You're welcome!")]

    assert agent.warm_up() is None
    review = agent.respond(Turn("c", "Это позитивно? прекрасно"))
    thanks = agent.respond(Turn("c", "Thanks!"))

    assert (review.text, review.results) == ("Позитивно.", ["sentiment · positive 87%"])
    assert (thanks.text, thanks.results) == ("You're welcome!", [])
    chats = [r for r in fake_ollama.requests if r.path == "/api/chat" and r.body.get("messages")]
    warm, *asked = chats
    assert not any(r.body.get("tools") for r in chats)
    system = agent.system_prompt(False)
    assert warm.body["messages"] == [{"role": "system", "content": system}] and "- sentiment:" in system
    assert all(r.body["messages"][0] == {"role": "system", "content": system} for r in asked)
    assert [bool(r.body.get("format")) for r in asked] == [True, True, False, False]  # thanks: no decision
    for before, after in zip(asked, asked[1:]):
        kept = before.body["messages"][:-1] if before.body.get("format") else before.body["messages"]
        assert after.body["messages"][:len(kept)] == kept
    # the first turn after warm-up reads its own words (and instruction), not the system prompt again
    assert asked[0].prompt_eval_count < warm.prompt_eval_count / 4


def test_a_native_model_s_call_on_small_talk_is_not_run(fake_ollama: FakeOllama, tmp_path: Path,
                                                        agent_for) -> None:
    """Qwen's template keeps the tools in the system block: native, tools read at warm-up; a
    call of a text tool on the user's own "thanks" is not run, and the model is asked to answer
    at the end of the same prompt."""
    fake_ollama.templates["llama3.1:8b"] = template("qwen2.5")
    agent = agent_for(settings_for(fake_ollama.url, tmp_path))
    fake_ollama.script += [tool_call("sentiment", text="Thanks a lot!"), answer("You're welcome!")]

    assert agent.warm_up() is None
    reply = agent.respond(Turn("c", "Thanks a lot!"))

    assert (reply.text, reply.results) == ("You're welcome!", [])
    assert agent.tools.get("sentiment").calls == []  # type: ignore[attr-defined]
    warm, first, second = [r for r in fake_ollama.requests if r.path == "/api/chat" and r.body.get("messages")]
    assert warm.body["tools"] == first.body["tools"] == second.body["tools"] == agent.schemas
    assert second.body["messages"][:len(first.body["messages"])] == first.body["messages"]
    assert second.body["messages"][-1]["content"].startswith("[No tool is needed")
