"""The real Ollama client path (ChatOllama + the ollama client) against a local fake of
Ollama's HTTP API, with fake tools and with the real tools on ../shared media.

The ``test_real_ollama_*`` tests at the end talk to a real Ollama at OLLAMA_HOST and are skipped
unless it answers and has the model (ASSISTANT_LLM_MODEL, default llama3.1:8b) pulled.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from assistant.agent import NO_LLM_NOTE, Agent, build_agent
from assistant.config import Settings
from assistant.errors import LLMError
from assistant.llm import DECISION_TOKENS, ModelInfo
from assistant.llm.ollama import OllamaLLM
from assistant.runtime import build_tools
from assistant.turns import Turn
from tests.fake_ollama import FakeOllama, answer, slow, tool_call, unused_url
from tests.scripted_llm import fake_tools
from tools.registry import ToolRegistry


def settings_for(host: str, tmp_path: Path, **overrides) -> Settings:
    return Settings(ollama_host=host, db_path=tmp_path / "memory.sqlite3", **overrides)


@pytest.fixture()
def agent_for(make_agent):
    """``agent_for(settings, tools=None)``: an agent (``make_agent``'s) on the Ollama that
    ``settings`` name, with their context window and rounds."""
    def make(settings: Settings, tools: ToolRegistry | None = None) -> Agent:
        return make_agent(OllamaLLM(settings), tools, num_ctx=settings.llm_num_ctx,
                          max_tool_rounds=settings.max_tool_rounds)
    return make


def test_tool_call_round_trip_sends_schemas_context_and_keep_alive(fake_ollama: FakeOllama, tmp_path: Path,
                                                                   agent_for) -> None:
    settings = settings_for(fake_ollama.url, tmp_path, llm_num_ctx=6144, llm_keep_alive="45m")
    agent = agent_for(settings)
    fake_ollama.script += [tool_call("sentiment", text="Отличный проект!"), answer("Тон позитивный (87%).")]
    tokens: list[str] = []

    reply = agent.respond(Turn("c", "Оцени: «Отличный проект!»"), on_token=tokens.append)

    assert reply.text == "Тон позитивный (87%)." and reply.llm_used
    assert "".join(tokens) == reply.text
    first, second = fake_ollama.chat_requests()
    assert first["model"] == "llama3.1:8b" and first["stream"] is True
    assert first["options"]["num_ctx"] == 6144 and first["keep_alive"] == "45m"
    assert first["tools"] == agent.tools.schemas()
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"][0]["function"] == {
        "name": "sentiment", "arguments": {"text": "Отличный проект!"}}
    assert json.loads(second["messages"][3]["content"])["labels"][0]["label"] == "positive"


def test_a_reply_carries_the_server_s_prompt_token_count(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    """Ollama's prompt_eval_count reaches the agent (it calibrates the history budget)."""
    from langchain_core.messages import HumanMessage

    fake_ollama.script.append(answer("Hi."))
    reply = OllamaLLM(settings_for(fake_ollama.url, tmp_path)).chat([HumanMessage(content="hi")])
    (request,) = [r for r in fake_ollama.requests if r.path == "/api/chat"]
    assert reply.content == "Hi." and reply.usage_metadata["input_tokens"] == request.prompt_eval_count > 1


def test_warm_up_and_status(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    agent = agent_for(settings_for(fake_ollama.url, tmp_path))

    assert agent.warm_up() is None
    load, prefix = [r.body for r in fake_ollama.requests if r.path == "/api/chat"]
    assert (load["model"], load["messages"], load["keep_alive"]) == ("llama3.1:8b", [], "30m")
    # the fixed start of every prompt, read once: the system prompt with the tools (native)
    assert prefix["messages"] == [{"role": "system", "content": agent.system_prompt(True)}]
    assert prefix["tools"] == agent.schemas and prefix["options"]["num_predict"] == 1
    assert prefix["options"]["num_ctx"] == 8192  # the same window: Ollama must not reload the model
    status = agent.llm_status()
    assert (status.reachable, status.model_available, status.tool_calling, status.error) == (True, True, "native", None)


def test_server_down(tmp_path: Path, agent_for) -> None:
    host = unused_url()
    agent = agent_for(settings_for(host, tmp_path))

    warning = agent.warm_up()
    reply = agent.respond(Turn("c", "hello"))

    assert warning == f"Ollama is not reachable at {host} – start it with `ollama serve` (or set OLLAMA_HOST)."
    assert not reply.llm_used and warning in reply.text and reply.notes == [NO_LLM_NOTE]
    status = agent.llm_status()
    assert not status.reachable and status.error == warning


def test_model_not_pulled(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    agent = agent_for(settings_for(fake_ollama.url, tmp_path, llm_model="llama3.2:1b"))
    fix = "run `ollama pull llama3.2:1b`"

    assert fix in (agent.warm_up() or "")
    reply = agent.respond(Turn("c", "hello"))

    assert fix in reply.text and not reply.llm_used
    status = agent.llm_status()
    assert status.reachable and not status.model_available


def test_model_without_tools_gets_the_structured_decision(fake_ollama: FakeOllama, tmp_path: Path,
                                                          agent_for) -> None:
    """Ollama says llama3 has no tools capability: no request offers it tools (none is
    rejected); a decision constrained by a JSON schema, then a plain answer."""
    agent = agent_for(settings_for(fake_ollama.url, tmp_path, llm_model="llama3"))
    fake_ollama.script += [answer('{"tool_calls": [{"name": "sentiment", "arguments": {"text": "супер"}}]}'),
                           answer('{"tool_calls": []}'), answer("Позитивно."),
                           answer('{"tool_calls": []}'), answer("Ещё раз.")]

    first = agent.respond(Turn("c", "Это позитивно? супер"))
    second = agent.respond(Turn("c", "А это позитивно?"))

    assert (first.text, first.notes) == ("Позитивно.", [])
    assert second.text == "Ещё раз." and second.notes == []
    requests = [r for r in fake_ollama.requests if r.path == "/api/chat"]
    assert not any(r.body.get("tools") for r in requests)
    decision = requests[0].body["format"]  # Ollama's structured outputs: a JSON schema
    names = [call["properties"]["name"]["enum"] for call in decision["properties"]["tool_calls"]["items"]["anyOf"]]
    assert names == [["sentiment"]] and requests[0].body["options"]["num_predict"] == DECISION_TOKENS
    assert "format" not in requests[2].body or not requests[2].body["format"]  # the answer is plain text
    result = requests[2].body["messages"][-1]
    assert result["role"] == "user" and result["content"].startswith("[Tool result of sentiment on ")
    assert agent.llm_status().tool_calling == "structured"
    assert "does not support native tool calling" in (agent.warm_up() or "")


def test_response_slower_than_the_timeout(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    agent = agent_for(settings_for(fake_ollama.url, tmp_path, llm_timeout=0.3))
    fake_ollama.script.append(slow(2.0))

    reply = agent.respond(Turn("c", "hello"))

    assert "Ollama did not answer within 0.3 s (ASSISTANT_LLM_TIMEOUT)" in reply.text and not reply.llm_used


def test_cancel_stops_the_stream(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    agent = agent_for(settings_for(fake_ollama.url, tmp_path))
    fake_ollama.script.append(answer("one two three four five"))
    cancel = threading.Event()
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        cancel.set()

    reply = agent.respond(Turn("c", "count"), on_token=on_token, cancel=cancel)

    assert tokens == ["one"] and reply.text == "one\n\n_(cancelled)_"


def test_a_model_per_conversation(fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> None:
    settings = settings_for(fake_ollama.url, tmp_path)
    agent = agent_for(settings)

    assert agent.models() == [ModelInfo("llama3.1:8b", True, False), ModelInfo("llama3:latest", False, False)]
    assert agent.set_model("old", "llama3") == ModelInfo("llama3:latest", False, False)  # Ollama's "latest" tag
    with pytest.raises(LLMError, match=r"no model 'nosuch' in Ollama \(it has: llama3.1:8b, llama3:latest\); "
                                       r"`ollama pull nosuch`"):
        agent.set_model("old", "nosuch")
    fake_ollama.script += [answer("Old model."), answer("Default model.")]

    old = agent.respond(Turn("old", "hi"))  # small talk: no tool to offer, so no decision
    new = agent.respond(Turn("new", "hi"))

    assert (old.text, new.text) == ("Old model.", "Default model.")
    reply, other = fake_ollama.chat_requests()
    assert (reply["model"], other["model"]) == ("llama3:latest", "llama3.1:8b")
    assert not reply.get("format") and not reply.get("tools")  # no native tools, known per model from the list
    assert other["tools"]  # the other conversation's model still calls tools natively
    assert agent.llm_status("old").tool_calling == "structured" and agent.llm_status("new").tool_calling == "native"

    # A restart: the choice is in the database; the new process learns again what llama3 can do.
    again = agent_for(settings)
    fake_ollama.script += [answer("Still the old model.")]
    reply = again.respond(Turn("old", "and now?"))
    assert reply.text == "Still the old model."
    assert {r["model"] for r in fake_ollama.chat_requests()[2:]} == {"llama3:latest"}
    assert not any(r.get("tools") for r in fake_ollama.chat_requests()[2:])  # learnt from /api/show
    assert (again.model_of("old"), again.model_of("new")) == ("llama3:latest", "llama3.1:8b")
    again.reset("old")
    assert again.model_of("old") == "llama3:latest"  # /reset forgets the conversation, not its model
    again.set_model("old", "llama3.1:8b")  # the default again: follows ASSISTANT_LLM_MODEL from now on
    assert again.memory.conversation_model("old") is None


@pytest.fixture(scope="module")
def real_tools(models_dir: Path) -> ToolRegistry:
    """Every real tool (real YAMNet, stand-in weights for the others), loaded once per module."""
    return build_tools(Settings.from_env({"ASSISTANT_MODELS_DIR": str(models_dir), "ASSISTANT_DEVICE": "cpu"}))


@pytest.fixture()
def real_agent(real_tools: ToolRegistry, fake_ollama: FakeOllama, tmp_path: Path, agent_for) -> Agent:
    return agent_for(settings_for(fake_ollama.url, tmp_path), real_tools)


def test_build_agent_wires_tools_memory_and_ollama(models_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    settings = Settings.from_env()

    agent = build_agent(settings)

    assert set(agent.tools.names) == {"sentiment", "audio", "image", "detect", "video", "speech", "vision"}
    assert agent.memory.path == settings.db_path and settings.db_path.exists()
    assert (agent.llm_status().host, agent.llm_status().model) == ("http://127.0.0.1:9", "llama3.1:8b")
    assert build_agent(settings, use_llm=False).llm is None
    assert not any(tool.loaded for tool in agent.tools)  # models load on first use, not here


def test_real_tools_end_to_end(real_agent: Agent, fake_ollama: FakeOllama, media: Path) -> None:
    store = real_agent.attachments("c")
    photo = store.register(media / "images" / "inet_zebra.jpg")
    siren = store.register(media / "audio" / "us8k_siren_102853-8-0-0.wav")
    fake_ollama.script += [tool_call("sentiment", text="Шумно тут!"), answer("Зебра и сирена.")]

    reply = real_agent.respond(Turn("c", "Шумно тут! Послушай и посмотри.", [photo, siren]))

    assert reply.text == "Зебра и сирена." and reply.llm_used
    first, second = fake_ollama.chat_requests()
    # Every tool but vision: llama3.1:8b cannot see images and no vision model is set.
    assert {tool["function"]["name"] for tool in first["tools"]} == {"sentiment", "audio", "image", "detect", "video", "speech"}
    results = [json.loads(m["content"]) for m in first["messages"] if m["role"] == "tool"]
    routed = {result.get("tool"): result for result in results}
    assert set(routed) == {"image", "audio"}  # no detection: the text does not ask what or where
    assert all("error" not in result for result in routed.values())
    assert {"Siren", "Emergency vehicle"} & {label["label"] for label in routed["audio"]["labels"][:3]}
    assert len(routed["image"]["labels"]) >= 1
    sentiment = json.loads(second["messages"][-1]["content"])
    assert sentiment["tool"] == "sentiment" and len(sentiment["labels"]) == 3


def test_real_tools_answer_without_ollama(real_tools: ToolRegistry, media: Path, tmp_path: Path,
                                          agent_for) -> None:
    agent = agent_for(settings_for(unused_url(), tmp_path), real_tools)
    siren = agent.attachments("c").register(media / "audio" / "siren.m4a")

    reply = agent.respond(Turn("c", "", [siren]))

    assert not reply.llm_used and "`ollama serve`" in reply.text
    assert reply.text.startswith("_Ollama is not reachable at ")
    assert any(line.startswith("audio · ") for line in reply.results)
    line = next(line for line in reply.text.splitlines() if line.startswith(f"- **audio on {siren.id}**"))
    assert "Siren" in line or "Emergency vehicle" in line


def test_bad_attachment_for_a_real_tool_is_explained(real_agent: Agent, fake_ollama: FakeOllama,
                                                     media: Path) -> None:
    photo = real_agent.attachments("c").register(media / "images" / "inet_pizza.jpg")
    fake_ollama.script += [tool_call("audio", attachment_id=photo.id), tool_call("video", attachment_id="att_7"),
                           answer("Это фото, а не звук.")]

    reply = real_agent.respond(Turn("c", "послушай", [photo]))

    assert reply.text == "Это фото, а не звук."
    errors = [json.loads(m["content"]).get("error") for m in fake_ollama.chat_requests()[-1]["messages"]
              if m["role"] == "tool"]
    assert errors[0] is None  # the routed image classification
    assert photo.id in errors[1] and "is an image" in errors[1] and "this tool needs" in errors[1]
    assert errors[2].startswith("Unknown attachment id 'att_7'")


# -- a real Ollama, when there is one -------------------------------------------------------

@pytest.fixture(scope="module")
def real_ollama_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.from_env()
    settings = Settings(ollama_host=settings.ollama_host, llm_model=settings.llm_model,
                        db_path=tmp_path_factory.mktemp("real-ollama") / "memory.sqlite3")
    status = OllamaLLM(settings).status()
    if status.error:
        pytest.skip(f"real Ollama not usable: {status.error}")
    return settings


def test_real_ollama_answers_and_calls_a_tool(real_ollama_settings: Settings, agent_for) -> None:
    tools = fake_tools()
    agent = agent_for(real_ollama_settings, tools)
    assert agent.warm_up() in (None, OllamaLLM(real_ollama_settings).no_tools_note())

    reply = agent.respond(Turn("real", "Use the sentiment tool on this text and tell me the result: "
                                       "«Этот проект отличный!»"))

    assert reply.llm_used and reply.text.strip()
    assert tools.get("sentiment").calls  # type: ignore[attr-defined]
