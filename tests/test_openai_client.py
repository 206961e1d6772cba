"""The OpenAI-compatible client (ASSISTANT_LLM_API=openai: ChatOpenAI and the openai client)
against the scripted OpenAI-style server ``tests/fake_openai.py``: what a person sees is what
the Ollama path gives, and every fault a server has becomes one sentence with the tool
results kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from assistant.agent import Agent
from assistant.config import Settings
from assistant.llm import DECISION_TOKENS
from assistant.llm.openai import OpenAILLM
from assistant.memory import Memory
from assistant.turn.fallback import STOPPED
from assistant.turns import Turn
from tests.conftest import ROOT
from tests.fake_openai import FakeOpenAI, answer, cut, failure, tool_call
from tests.scripted_llm import fake_tools

SENTIMENT = {"type": "function", "function": {"name": "sentiment", "description": "tone of a text", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


def settings_for(url: str, tmp_path: Path, **overrides) -> Settings:
    return Settings(llm_api="openai", llm_base_url=url, db_path=tmp_path / "memory.sqlite3", **overrides)


def agent_for(settings: Settings) -> Agent:
    return Agent(fake_tools(), Memory(settings.db_path), OpenAILLM(settings),
                 output_root=settings.db_path.parent / "outputs", num_ctx=settings.llm_num_ctx,
                 max_tool_rounds=settings.max_tool_rounds, status_host=settings.llm_host)


def photo_turn(agent: Agent, media: Path, text: str = "What is this?") -> Turn:
    photo = agent.attachments("c").register(media / "images" / "ext_tabby_cat.jpg")
    return Turn("c", text, [photo])


def test_tool_call_round_trip_with_deltas_split_across_chunks(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    agent = agent_for(settings_for(fake_openai.url, tmp_path, llm_api_key="sk-test"))
    fake_openai.script += [tool_call("sentiment", text="Отличный проект!", pieces=5), answer("Тон позитивный (87%).")]
    tokens: list[str] = []

    reply = agent.respond(Turn("c", "Оцени: «Отличный проект!»"), on_token=tokens.append)

    assert reply.text == "Тон позитивный (87%)." and reply.llm_used
    assert "".join(tokens) == reply.text
    assert any(line.startswith("sentiment · ") for line in reply.results)
    first, second = fake_openai.chat_requests()
    assert first["model"] == "llama3.1:8b" and first["stream"] is True
    assert first["tools"] == agent.tools.schemas() and first["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    call = second["messages"][2]["tool_calls"][0]["function"]
    assert call["name"] == "sentiment" and json.loads(call["arguments"]) == {"text": "Отличный проект!"}
    assert second["messages"][2]["content"] == ""  # not null: llama-cpp-python's server rejects null
    headers = [r["headers"] for r in fake_openai.requests]
    assert all(h.get("authorization") == "Bearer sk-test" for h in headers)


def test_two_calls_streamed_in_pieces_come_back_whole(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    llm = OpenAILLM(settings_for(fake_openai.url, tmp_path))
    fake_openai.script.append(tool_call(("sentiment", {"text": "a long text, with commas"}),
                                        ("image", {"attachment_id": "att_1"}), pieces=7))

    reply = llm.chat([HumanMessage(content="hi")], tools=[SENTIMENT])

    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("sentiment", {"text": "a long text, with commas"}), ("image", {"attachment_id": "att_1"})]
    assert reply.usage_metadata["input_tokens"] == 10 and llm.native_tools is True


def test_a_server_without_tool_calling_gets_the_decision_as_a_json_schema(tmp_path: Path) -> None:
    server = FakeOpenAI(tools=False).start()
    try:
        agent = agent_for(settings_for(server.url, tmp_path))
        server.script += [answer('{"tool_calls": [{"name": "sentiment", "arguments": {"text": "супер"}}]}'),
                          answer('{"tool_calls": []}'), answer("Позитивно.")]

        reply = agent.respond(Turn("c", "Это позитивно? супер"))  # tools are refused (400): a decision instead

        assert reply.text == "Позитивно." and any(line.startswith("sentiment · ") for line in reply.results)
        assert any("takes no native tool calls" in note and "--enable-auto-tool-choice" in note
                   for note in reply.notes)
        refused, decision, _, final = server.chat_requests()
        assert refused.get("tools") and "tools" not in decision and "tools" not in final
        assert decision["response_format"]["type"] == "json_schema"
        assert decision["response_format"]["json_schema"]["schema"]["type"] == "object"
        assert decision["max_tokens"] == DECISION_TOKENS and "response_format" not in final
        assert agent.llm.native_tools is False
    finally:
        server.stop()


def test_a_server_that_rejects_json_schema_gets_json_object_with_the_schema(tmp_path: Path) -> None:
    server = FakeOpenAI(json_schema=False).start()
    try:
        llm = OpenAILLM(settings_for(server.url, tmp_path))
        server.script += [answer('{"tool_calls": []}'), answer('{"tool_calls": []}')]
        schema = {"type": "object", "properties": {"tool_calls": {"type": "array"}}}

        first = llm.chat([HumanMessage(content="hi")], format=schema)
        second = llm.chat([HumanMessage(content="hi")], format=schema)

        assert first.content == second.content == '{"tool_calls": []}'
        formats = [body["response_format"] for body in server.chat_requests()]
        assert formats == [{"type": "json_schema", "json_schema": {"name": "decision", "schema": schema}},
                           {"type": "json_object", "schema": schema}, {"type": "json_object", "schema": schema}]
    finally:
        server.stop()


@pytest.mark.parametrize(("scripted", "sentence"), [
    (failure(429, {"error": {"message": "Rate limit reached"}}, retry_after="7"),
     "The language model server is busy (HTTP 429: too many requests) – try again in 7 s."),
    (failure(500, "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
                  "<body><h1>Internal Server Error</h1><p>upstream crashed</p></body></html>", content_type="text/html"),
     "The language model server answered with an error (HTTP 500): 500 Internal Server Error"),
    (failure(503, {"error": {"message": "model is loading"}}),
     "The language model server answered with an error (HTTP 503): model is loading"),
], ids=["429-retry-after", "500-html", "503-json"])
def test_a_server_error_is_one_sentence_and_the_tool_results_stay(
        fake_openai: FakeOpenAI, tmp_path: Path, media: Path, scripted, sentence: str) -> None:
    agent = agent_for(settings_for(fake_openai.url, tmp_path))
    fake_openai.script.append(scripted)

    reply = agent.respond(photo_turn(agent, media))

    assert sentence in reply.text and "<" not in reply.text
    assert any(line.startswith("image · tabby") for line in reply.results)
    assert len(fake_openai.chat_requests()) == 1  # no silent retries


def test_a_stream_cut_mid_answer_keeps_the_words_and_the_results(fake_openai: FakeOpenAI, tmp_path: Path,
                                                                 media: Path) -> None:
    agent = agent_for(settings_for(fake_openai.url, tmp_path))
    fake_openai.script.append(cut("A tabby cat sleeps on the sofa.", after=3))
    tokens: list[str] = []

    reply = agent.respond(photo_turn(agent, media), on_token=tokens.append)

    assert reply.text.startswith("A tabby cat") and STOPPED in reply.text
    assert "".join(tokens) == "A tabby cat"
    assert reply.notes == [f"The language model stopped answering (the connection to {fake_openai.url} "
                           f"broke off) – try again."]
    assert any(line.startswith("image · tabby") for line in reply.results)
    fake_openai.script.append(answer("Still here."))
    assert agent.respond(Turn("c", "hello?")).text == "Still here."


def test_wrong_key_unknown_model_and_no_server(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.api_key = "sk-right"
    wrong = agent_for(settings_for(fake_openai.url, tmp_path, llm_api_key="sk-wrong"))
    reply = wrong.respond(Turn("c", "hello"))
    assert (f"The language model server at {fake_openai.url} refused the API key (HTTP 401) – "
            f"set ASSISTANT_LLM_API_KEY to a key it accepts.") in reply.text
    status = wrong.llm_status()
    assert status.reachable and not status.model_available
    assert "sk-" not in reply.text + json.dumps(reply.notes) + str(status) + repr(wrong.llm.settings)

    right = settings_for(fake_openai.url, tmp_path, llm_api_key="sk-right", llm_model="gpt-nope")
    missing = OpenAILLM(right)
    assert missing.status().error == (f"The model gpt-nope is not served at {fake_openai.url} (it serves: "
                                      f"llama3.1:8b, qwen2.5:7b) – set ASSISTANT_LLM_MODEL to one it serves.")
    with pytest.raises(Exception, match=r"The model gpt-nope is not available at .* \(HTTP 404: The model "
                                        r"`gpt-nope` does not exist\.\)"):
        missing.chat([HumanMessage(content="hi")])

    down = OpenAILLM(settings_for("http://127.0.0.1:9/v1", tmp_path))
    assert down.warm_up() == ("The language model server is not reachable at http://127.0.0.1:9/v1 – start it "
                              "(or set ASSISTANT_LLM_BASE_URL).")


def test_model_lists_v1_models_and_learns_tool_calling(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    agent = agent_for(settings_for(fake_openai.url, tmp_path))

    listed = agent.models()
    assert [(m.name, m.tools) for m in listed] == [("llama3.1:8b", None), ("qwen2.5:7b", None)]
    assert listed[0].describe() == "tool calling not reported"
    assert agent.llm_status().tool_calling == "unknown"

    fake_openai.script.append(answer("Hi!"))
    agent.respond(Turn("c", "Оцени: «супер»"))  # a request that offers tools, answered
    assert agent.models()[0].tools is True and agent.llm_status().tool_calling == "native"
    assert agent.set_model("c", "qwen2.5:7b").name == "qwen2.5:7b"
    fake_openai.script.append(answer("From qwen."))
    assert agent.respond(Turn("c", "hi")).text == "From qwen."
    assert fake_openai.chat_requests()[-1]["model"] == "qwen2.5:7b"


def test_model_in_the_repl_names_the_server_not_ollama(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """/model over the OpenAI API: the server and its models, never "Ollama" or `ollama pull`."""
    env = {"ASSISTANT_LLM_API": "openai", "ASSISTANT_LLM_BASE_URL": fake_openai.url,
           "ASSISTANT_DB": str(tmp_path / "db.sqlite3")}
    result = subprocess.run([sys.executable, "-m", "assistant", "chat"], input="/model\n/model mistral\n",
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"The OpenAI-compatible server: {fake_openai.url}" in result.stdout
    assert "Models on the OpenAI-compatible server" in result.stdout and "qwen2.5:7b" in result.stdout
    assert "There is no model 'mistral' on the OpenAI-compatible server (it has: llama3.1:8b, qwen2.5:7b)." \
        in result.stderr
    assert "ollama" not in (result.stdout + result.stderr).lower()


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistant", "doctor"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_doctor_checks_the_url_the_key_and_the_model_never_showing_the_key(fake_openai: FakeOpenAI,
                                                                             tmp_path: Path) -> None:
    fake_openai.api_key = "sk-secret-123"
    env = {"ASSISTANT_LLM_API": "openai", "ASSISTANT_LLM_BASE_URL": fake_openai.url,
           "ASSISTANT_LLM_MODEL": "qwen2.5:7b", "ASSISTANT_DB": str(tmp_path / "db.sqlite3")}

    good = doctor({**env, "ASSISTANT_LLM_API_KEY": "sk-secret-123"})
    bad = doctor({**env, "ASSISTANT_LLM_API_KEY": "sk-wrong-456"})

    assert f"[ok] LLM server: reachable at {fake_openai.url} (with an API key)" in good.stdout
    assert "[ok] LLM model: qwen2.5:7b is served" in good.stdout
    assert "[fail] LLM server: " in bad.stdout and "refused the API key (HTTP 401)" in bad.stdout
    assert bad.returncode == 1
    for result in (good, bad):
        assert "Ollama" not in result.stdout and "Traceback" not in result.stderr
        assert "sk-secret" not in result.stdout + result.stderr and "sk-wrong" not in result.stdout + result.stderr
