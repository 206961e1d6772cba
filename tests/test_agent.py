"""The agent loop with scripted chat models and small fake tools (no Ollama, no real models)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from tools.detection import PhotoDetectionTool
from assistant import agent as agent_module
from assistant.agent import NO_LLM_NOTE, Agent
from assistant.errors import ToolError
from assistant.llm import LLMError, ToolsUnsupported
from assistant.turns import Turn
from tests.scripted_llm import BrokenTool, ScriptedLLM, call_tools, say
from tools.registry import ToolRegistry


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "cat.jpg"
    path.write_bytes(b"\xff\xd8\xff fake jpeg")
    return path


def attach(agent: Agent, conversation: str, path: Path, kind: str):
    return agent.attachments(conversation).register(path, kind=kind)


def tool_messages(messages: list) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage)]


def test_answer_without_tools(make_agent, tools: ToolRegistry) -> None:
    llm = ScriptedLLM([say("Hello! How can I help?")])
    tokens: list[str] = []
    reply = make_agent(llm).respond(Turn("c", "Привет"), on_token=tokens.append)

    assert reply.text == "Hello! How can I help?"
    assert reply.llm_used and reply.media == [] and reply.notes == []
    assert "".join(tokens).strip() == reply.text
    (call,) = llm.calls
    assert isinstance(call.messages[0], SystemMessage) and "user's language" in call.messages[0].content
    assert call.messages[-1] == HumanMessage(content="Привет")
    assert call.tools == tools.schemas()
    assert all(not tool.calls for tool in tools)  # type: ignore[attr-defined]


def test_one_tool_call_result_goes_back_to_the_model(make_agent, tools: ToolRegistry) -> None:
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "Отличный проект!"})), say("Позитивный отзыв (87%).")])
    reply = make_agent(llm).respond(Turn("c", "Оцени фразу «Отличный проект!»"))

    assert reply.text == "Позитивный отзыв (87%)."
    assert tools.get("sentiment").calls == [{"text": "Отличный проект!"}]  # type: ignore[attr-defined]
    second = llm.calls[1].messages
    assert isinstance(second[-2], AIMessage) and second[-2].tool_calls[0]["name"] == "sentiment"
    result = json.loads(second[-1].content)
    assert result["tool"] == "sentiment" and result["labels"][0] == {"label": "positive", "score": 0.87}
    assert second[-1].tool_call_id == second[-2].tool_calls[0]["id"]


def test_attachments_are_always_routed_before_the_model(make_agent, tools: ToolRegistry, photo: Path,
                                                        tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF fake")
    llm = ScriptedLLM([say("A cat and a siren.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    audio = attach(agent, "c", clip, "audio")

    agent.respond(Turn("c", "nice, right?", [image, audio]))

    assert tools.get("image").calls == [{"attachment_id": image.id}]  # type: ignore[attr-defined]
    assert tools.get("audio").calls == [{"attachment_id": audio.id}]  # type: ignore[attr-defined]
    assert tools.get("detect").calls == []  # type: ignore[attr-defined]  # not asked what/where
    first = llm.calls[0].messages
    assert first[1].content == (f"nice, right?\n\nAttachments: {image.id} (image, cat.jpg), "
                                f"{audio.id} (audio, clip.wav)")
    assert [m.name for m in tool_messages(first)] == ["image", "audio"]


@pytest.mark.parametrize("text", ["Что на фото?", "Where is the cat?", "Сколько здесь котов"])
def test_photo_also_goes_to_detection_when_asked_what_or_where(make_agent, tools: ToolRegistry,
                                                              photo: Path, text: str) -> None:
    llm = ScriptedLLM([say("Кот.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")

    reply = agent.respond(Turn("c", text, [image]))

    assert [m.name for m in tool_messages(llm.calls[0].messages)] == ["image", "detect"]
    assert reply.media == [agent.output_dir("c") / f"{image.id}_annotated.jpg"]
    assert reply.media[0].read_bytes() == b"annotated"


def test_detection_keywords() -> None:
    wants = PhotoDetectionTool.trigger.wants
    assert wants("image", "what's in the picture") and wants("image", "Найди машины")
    assert not wants("image", "Классная картинка") and not wants("image", "thanks!")
    assert not wants("audio", "what is this sound")


def test_two_tools_in_one_round(make_agent, tools: ToolRegistry, photo: Path) -> None:
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "милый котик"}), ("detect", {"attachment_id": "att_1"})),
                       say("Done.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")

    reply = agent.respond(Turn("c", "милый котик, правда?", [image]))

    assert reply.text == "Done." and len(llm.calls) == 2
    results = tool_messages(llm.calls[1].messages)
    assert [m.name for m in results] == ["image", "sentiment", "detect"]
    assert all("error" not in json.loads(m.content) for m in results)


def test_tool_error_goes_back_to_the_model(make_agent, tools: ToolRegistry) -> None:
    llm = ScriptedLLM([call_tools(("sentiment", {"txt": "oops"})), call_tools(("sentiment", {"text": "ok"})),
                       say("Fixed it.")])
    reply = make_agent(llm).respond(Turn("c", "mood?"))

    assert reply.text == "Fixed it."
    error = json.loads(tool_messages(llm.calls[1].messages)[-1].content)["error"]
    assert "Invalid arguments for sentiment" in error and "text" in error
    assert tools.get("sentiment").calls == [{"text": "ok"}]  # type: ignore[attr-defined]


def test_a_crashing_tool_is_reported_not_raised(make_agent) -> None:
    broken = BrokenTool("sentiment", frozenset(), "x", text=True)
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "a"})), say("The tool failed.")])
    agent = make_agent(llm, ToolRegistry([broken]))

    reply = agent.respond(Turn("c", "judge a"))

    assert reply.text == "The tool failed."
    error = json.loads(tool_messages(llm.calls[1].messages)[-1].content)["error"]
    assert error == "sentiment failed unexpectedly: RuntimeError: boom"


def test_unknown_and_foreign_attachment_ids_are_tool_errors(make_agent, tools: ToolRegistry, photo: Path) -> None:
    llm = ScriptedLLM([call_tools(("image", {"attachment_id": "att_99"}), ("detect", {"attachment_id": "att_1"})),
                       say("I cannot see those files.")])
    agent = make_agent(llm)
    attach(agent, "other-conversation", photo, "image")  # att_1, but not in conversation "c"

    reply = agent.respond(Turn("c", "look at att_99 and att_1"))

    assert reply.text == "I cannot see those files."
    errors = [json.loads(m.content)["error"] for m in tool_messages(llm.calls[1].messages)]
    assert errors[0].startswith("Unknown attachment id 'att_99'")
    assert errors[1].startswith("Unknown attachment id 'att_1' (this conversation has: none)")


def test_identical_calls_run_once_and_the_model_is_told_to_answer(make_agent, tools: ToolRegistry) -> None:
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "again"}))] * 3 + [say("It is positive (87%).")])
    reply = make_agent(llm).respond(Turn("c", "loop"))

    assert len(tools.get("sentiment").calls) == 1  # type: ignore[attr-defined]
    assert reply.text == "It is positive (87%)." and reply.results == ["sentiment · positive 87%"]
    assert all(c.tools == tools.schemas() for c in llm.calls)  # the same tools in every request
    assert "already run in this turn" in llm.calls[2].messages[-2].content
    assert llm.calls[2].messages[-1].content.startswith("[No more tool calls in this turn.")
    assert "plain sentences" in llm.calls[3].messages[-1].content  # the one retry


def test_round_limit_ends_in_a_grounded_reply(make_agent, tools: ToolRegistry) -> None:
    texts = iter(range(100))
    llm = ScriptedLLM([lambda m: call_tools(("sentiment", {"text": f"t{next(texts)}"}))] * 4)
    reply = make_agent(llm, max_tool_rounds=2).respond(Turn("c", "loop forever"))

    assert len(tools.get("sentiment").calls) == 2 and len(llm.calls) == 4  # type: ignore[attr-defined]
    assert "(No answer" not in reply.text and "kept asking for tools" in reply.text
    assert "- **sentiment**: sentiment: positive (87%)" in reply.text
    assert reply.results == ["sentiment · positive 87%"] * 2


def test_json_fallback_decides_with_a_schema_then_answers_in_plain_text(make_agent, tools: ToolRegistry) -> None:
    request = {"tool_calls": [{"name": "sentiment", "arguments": {"text": "прекрасно"}}]}
    llm = ScriptedLLM([say(json.dumps(request, ensure_ascii=False)), say('{"tool_calls": []}'), say("Позитивно.")],
                      native_tools=False)
    tokens: list[str] = []

    reply = make_agent(llm).respond(Turn("c", "Это позитивно? прекрасно"), on_token=tokens.append)

    assert reply.text == "Позитивно." and "".join(tokens).strip() == "Позитивно."
    assert reply.results == ["sentiment · positive 87%"]
    assert all(c.tools is None for c in llm.calls)
    assert [c.format is not None for c in llm.calls] == [True, True, False]
    calls = llm.calls[0].format["properties"]["tool_calls"]["items"]["anyOf"]
    assert [c["properties"]["name"]["enum"] for c in calls] == [["sentiment"]]  # no attachment to name yet
    sentiment = calls[0]["properties"]["arguments"]
    assert sentiment == tools.get("sentiment").schema()["function"]["parameters"]  # each tool's own arguments
    systems = {c.messages[0].content for c in llm.calls}
    assert len(systems) == 1 and "- detect: Fake detect tool." in systems.pop()  # one stable system prompt
    assert llm.calls[0].messages[-1].content.startswith("[Decide the next step.")
    answer = llm.calls[2].messages
    assert not any(isinstance(m, ToolMessage) or getattr(m, "tool_calls", None) for m in answer)
    assert answer[-1].content.startswith("[Tool result of sentiment on \u201cпрекрасно\u201d]:")  # a note, no JSON call
    assert not any(isinstance(m, AIMessage) for m in answer)
    assert tools.get("sentiment").calls == [{"text": "прекрасно"}]  # type: ignore[attr-defined]


def test_a_decision_offers_only_calls_that_could_add_something(make_agent, tools: ToolRegistry,
                                                               photo: Path) -> None:
    """A weak model offered a tool takes it, even for "hi": a decision offers a tool only on
    attachments it has not analysed yet (one that runs when asked, only when the message asks;
    constrained decoding then keeps the model from inventing ids), and a tool of the text alone
    only when the message asks what it measures. With nothing to offer there is no decision."""
    llm = ScriptedLLM([say("A tabby cat."), say("Fine, thanks!"), say('{"tool_calls": []}'), say("Behind the sofa."),
                       say('{"tool_calls": []}'), say("It sounds positive.")], native_tools=False)
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    agent.respond(Turn("c", "look", [image]))

    small_talk = agent.respond(Turn("c", "hi, how are you?"))
    agent.respond(Turn("c", "where is the cat?"))
    agent.respond(Turn("c", "is my mood positive today?"))

    assert small_talk.text == "Fine, thanks!" and small_talk.results == []
    history = [str(m.content) for m in llm.calls[1].messages]
    assert any(text.startswith(f"[Tool result of image on {image.id}]: ") for text in history)
    assert not any("tool_calls" in text for text in history)  # no call as JSON for the model to copy
    assert [c.format is not None for c in llm.calls] == [False, False, True, False, True, False]

    def offered(call) -> dict:
        calls = call.format["properties"]["tool_calls"]["items"]["anyOf"]
        return {c["properties"]["name"]["enum"][0]: c["properties"]["arguments"]["properties"].get("attachment_id")
                for c in calls}

    assert offered(llm.calls[2]) == {"detect": {"type": "string", "enum": [image.id]}}  # image: analysed already
    assert offered(llm.calls[4]) == {"sentiment": None}
    assert tools.get("image").calls == [{"attachment_id": image.id}]  # type: ignore[attr-defined]


@pytest.mark.parametrize("native", [True, False])
def test_a_quoted_passage_asked_about_is_judged_whatever_the_model_does(make_agent, tools: ToolRegistry,
                                                                        native: bool) -> None:
    """A weak model that answers "the tool found it negative" without calling the tool (or
    calls it again) still has the real result under its words."""
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "Ужасный сервис, больше не приду"})),
                       say("Отзыв негативный.")], native_tools=native)
    text = "Какая тональность у этого отзыва: «Ужасный сервис, больше не приду»?"

    reply = make_agent(llm).respond(Turn("c", text))

    assert tools.get("sentiment").calls == [{"text": "Ужасный сервис, больше не приду"}]  # type: ignore[attr-defined]
    assert reply.results == ["sentiment · positive 87%"] and reply.text == "Отзыв негативный."
    first = llm.calls[0]
    assert first.format is None  # the result is there already: no decision before the words
    assert str(first.messages[-1].content).startswith("[Tool result of sentiment") or \
        isinstance(first.messages[-1], ToolMessage)
    assert any("already run in this turn" in str(m.content) for m in llm.calls[1].messages)


def test_a_model_that_repeats_its_last_answer_is_asked_again(make_agent) -> None:
    old = "The photo shows a tabby cat sitting on a windowsill in the sun."
    llm = ScriptedLLM([say(old), say(old), say("Hello! I am fine, thank you.")])
    agent = make_agent(llm)
    agent.respond(Turn("c", "what is it?"))
    tokens: list[str] = []

    reply = agent.respond(Turn("c", "hi, how are you?"), on_token=tokens.append)

    assert reply.text == "Hello! I am fine, thank you." and "tabby" not in "".join(tokens)
    assert "could not be shown" in str(llm.calls[-1].messages[-1].content)


def test_json_fallback_answers_an_analysed_attachment_at_once(make_agent, tools: ToolRegistry,
                                                              photo: Path) -> None:
    """The attachment's tools already ran: no decision request before the words stream (it
    cost small models most of the turn); a call the model writes in its answer still runs."""
    llm = ScriptedLLM([say('Let me check the tone. {"name": "sentiment", "arguments": {"text": "прекрасно"}}'),
                       say("A tabby cat; the text is positive.")], native_tools=False)
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    seen: list[tuple[str, object]] = []

    reply = agent.respond(Turn("c", "прекрасно, правда?", [image]), on_token=lambda t: seen.append(("token", t)),
                          on_results=lambda results, heard: seen.append(("results", list(results))))

    assert [c.format for c in llm.calls] == [None, None] and all(c.tools is None for c in llm.calls)
    assert reply.results == ["image · tabby 87%", "sentiment · positive 87%"]
    assert reply.text == "Let me check the tone.\n\nA tabby cat; the text is positive."
    assert seen[0] == ("results", ["image · tabby 87%"])  # what was measured, before any word
    assert ("results", reply.results) in seen
    assert '"sentiment"' not in "".join(str(t) for kind, t in seen if kind == "token")


def test_rejected_tools_switch_to_json_and_say_so_once(make_agent, tools: ToolRegistry) -> None:
    def reject(messages: list) -> AIMessage:  # what OllamaLLM does on Ollama's 400
        llm.native_tools = False
        raise ToolsUnsupported("The model llama3 does not support native tool calling.")

    llm = ScriptedLLM([reject, say('{"tool_calls": [{"name": "nope", "arguments": {}}]}'),
                       say('{"tool_calls": []}'), say("Plain answer."), say('{"tool_calls": []}'), say("Second.")],
                      native_tools=None)
    agent = make_agent(llm)

    first = agent.respond(Turn("c", "is this positive?"))
    second = agent.respond(Turn("c", "and this, positive?"))

    assert first.text == "Plain answer." and first.notes == ["The model llama3 does not support native tool calling."]
    rejection = llm.calls[2].messages[-2].content
    assert rejection.startswith("[Tool request rejected: unknown tool 'nope'; available: sentiment, audio")
    assert second.text == "Second." and second.notes == []
    assert llm.calls[-1].tools is None


def test_llm_failure_answers_attachments_from_templates(make_agent, tools: ToolRegistry, photo: Path) -> None:
    reason = "Ollama is not reachable at http://127.0.0.1:11434 – start it with `ollama serve`."
    agent = make_agent(ScriptedLLM([LLMError(reason)]))
    image = attach(agent, "c", photo, "image")

    reply = agent.respond(Turn("c", "что это?", [image]))

    assert not reply.llm_used and reply.notes == [NO_LLM_NOTE]
    assert reply.text.startswith(f"_{reason} The tool results are below._")
    assert reply.results == ["image · tabby 87%", "detect · cat 87%"]
    assert f"- **image on {image.id}**: image: tabby (87%)" in reply.text
    assert f"- **detect on {image.id}**: detect: cat (87%)" in reply.text
    assert reply.media and reply.media[0].name == f"{image.id}_annotated.jpg"


def test_no_llm_mode(make_agent, tools: ToolRegistry, photo: Path) -> None:
    agent = make_agent(None)
    image = attach(agent, "c", photo, "image")

    with_photo = agent.respond(Turn("c", "", [image]))
    text_only = agent.respond(Turn("c", "hello"))

    assert not with_photo.llm_used and "- **image on att_1**: image: tabby (87%)" in with_photo.text
    assert "only analyse attachments" in text_only.text
    assert agent.warm_up() is None
    status = agent.llm_status()
    assert not status.reachable and "no-LLM" in (status.error or "")


def test_cancel_before_tools_run(make_agent, tools: ToolRegistry, photo: Path) -> None:
    llm = ScriptedLLM([say("never")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    cancel = threading.Event()
    cancel.set()

    reply = agent.respond(Turn("c", "what is it", [image]), cancel=cancel)

    assert "cancelled" in reply.notes and reply.text.endswith("_(cancelled)_")
    assert tools.get("image").calls == [] and llm.calls == []  # type: ignore[attr-defined]


def test_cancel_while_streaming_stops_the_turn(make_agent, tools: ToolRegistry) -> None:
    cancel = threading.Event()
    llm = ScriptedLLM([say("one two three four")])
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        cancel.set()

    reply = make_agent(llm).respond(Turn("c", "count"), on_token=on_token, cancel=cancel)

    assert tokens == ["one "] and "cancelled" in reply.notes


def test_unexpected_llm_failure_is_a_reply_not_an_exception(make_agent) -> None:
    reply = make_agent(ScriptedLLM([ValueError("weird")])).respond(Turn("c", "hi"))
    assert reply.text == "Something went wrong while answering: weird" and not reply.llm_used


def test_memory_survives_a_new_agent_and_reset_forgets(make_agent, tools: ToolRegistry, photo: Path) -> None:
    first = make_agent(ScriptedLLM([call_tools(("sentiment", {"text": "мне нравится"})), say("Позитивно.")]))
    first.respond(Turn("c", "Какой тон: мне нравится"))

    llm = ScriptedLLM([say("Вы спрашивали про «мне нравится»."), say("Новый разговор.")])
    second = make_agent(llm)  # a fresh agent on the same database, as after a restart
    second.respond(Turn("c", "о чём я спрашивал?"))
    history = llm.calls[0].messages

    assert [type(m).__name__ for m in history] == ["SystemMessage", "HumanMessage", "AIMessage", "ToolMessage",
                                                   "AIMessage", "HumanMessage"]
    assert history[1].content == "Какой тон: мне нравится" and history[4].content == "Позитивно."
    assert history[3].tool_call_id == history[2].tool_calls[0]["id"]

    second.reset("c")
    second.respond(Turn("c", "привет"))
    assert [type(m).__name__ for m in llm.calls[1].messages] == ["SystemMessage", "HumanMessage"]


def test_conversations_are_separate(make_agent) -> None:
    llm = ScriptedLLM([say("A"), say("B")])
    agent = make_agent(llm)
    agent.respond(Turn("alice", "secret of alice"))
    agent.respond(Turn("bob", "hi"))
    assert all("secret of alice" not in str(m.content) for m in llm.calls[1].messages)


def test_context_budget_drops_the_oldest_turns(make_agent) -> None:
    long = "word " * 400  # ~500 tokens per turn
    llm = ScriptedLLM([say("ok")], repeat_last=True)
    agent = make_agent(llm, num_ctx=4096)
    for i in range(6):
        agent.respond(Turn("c", f"turn {i}: {long}"))

    last = llm.calls[-1].messages
    contents = [str(m.content) for m in last]
    assert contents[1].startswith("[Memory note: ") and "earlier turn(s)" in contents[1]
    assert any(c.startswith("turn 4:") for c in contents) and not any(c.startswith("turn 0:") for c in contents)
    assert sum(len(c) for c in contents) // 4 < 4096 - 1024


def test_a_turn_sends_the_same_history_in_every_request(make_agent) -> None:
    """What a turn adds (a long call and its result) does not push a history block out
    between its requests: they share one prefix, which the server's prompt cache serves."""
    long = "word " * 400
    llm = ScriptedLLM([say("ok")] * 6 + [call_tools(("sentiment", {"text": "fine " * 150})), say("Positive.")])
    agent = make_agent(llm, num_ctx=2800)
    for i in range(6):
        agent.respond(Turn("c", f"turn {i}: {long}"))

    agent.respond(Turn("c", "and this one?"))

    first, second = (call.messages for call in llm.calls[-2:])
    user = next(i for i, m in enumerate(first) if m.content == "and this one?")
    assert second[:user] == first[:user] and len(second) > len(first)
    assert any(str(m.content).startswith("turn 5:") for m in first[:user])


def test_a_server_that_counts_more_tokens_gets_less_history(make_agent, tmp_path: Path) -> None:
    """The server's own count of a prompt (here 1.5 times the estimate) scales the history
    budget, so the server never has to cut the prompt itself."""
    from assistant.memory import estimate_tokens

    long = "слово " * 300  # ~450 estimated tokens per turn

    def real_size(messages) -> int:  # the prompt with the tool schemas, as the server reads it
        return int(1.5 * (estimate_tokens(messages) + agent.schema_tokens))

    def counted(messages):
        return AIMessage(content="ok", usage_metadata={"input_tokens": real_size(messages),
                                                       "output_tokens": 1, "total_tokens": 1})

    sent = {}
    for name, step in (("plain", say("ok")), ("counting", counted)):
        llm = ScriptedLLM([step], repeat_last=True)
        agent = make_agent(llm, num_ctx=8192)
        for i in range(14):
            agent.respond(Turn(name, f"turn {i}: {long}"))
        sent[name] = llm.calls[-1].messages
        if name == "counting":
            assert round(agent.token_ratio("scripted"), 2) == 1.5
            assert real_size(sent[name]) <= 8192 - 1024

    assert len(sent["counting"]) < len(sent["plain"])


def test_the_model_never_sees_a_file_system_path(make_agent, photo: Path, tmp_path: Path) -> None:
    llm = ScriptedLLM([call_tools(("detect", {"attachment_id": "att_1"})), say("A cat.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")

    reply = agent.respond(Turn("c", "what is in the photo?", [image]))

    assert reply.media and all(path.is_absolute() and path.is_file() for path in reply.media)
    sent = " ".join(str(m.content) for call in llm.calls for m in call.messages)
    assert "att_1_annotated.jpg" in sent  # the model knows the file by its name
    assert str(tmp_path) not in sent and "/outputs/" not in sent


#: What the model reads at the start of every conversation: the system prompt and every tool's
#: schema, in tokens (issue 9: at most 900, every tool that runs with the model included; the
#: vision tool of issue 23 is left out without a vision model, and adds about 50 with one).
FIXED_PROMPT_BUDGET = 900
#: Characters per token of that text, measured with the Qwen2.5 and SmolLM2 tokenizers (3.9
#: and 3.7: 814 and 852 tokens for the six tools); the worse one counts.
MEASURED_CHARS_PER_TOKEN = 3.7


@pytest.mark.parametrize("native", [True, False])
def test_the_first_request_reads_a_short_fixed_prompt(make_agent, native: bool) -> None:
    from assistant.config import Settings
    from assistant.runtime import build_tools

    script = [say("Привет!")] if native else [say('{"tool_calls": []}'), say("Привет!")]
    llm = ScriptedLLM(script, native_tools=native)
    agent = make_agent(llm, build_tools(Settings.from_env({})))  # the real tools, with their real descriptions
    agent.respond(Turn("c", "Привет! Как дела?"))

    first = llm.calls[0]
    fixed = str(first.messages[0].content) + json.dumps(first.tools or [], ensure_ascii=False)
    assert len(fixed) / MEASURED_CHARS_PER_TOKEN <= FIXED_PROMPT_BUDGET
    running = [name for name in agent.tools.names if name not in agent.unavailable_tools("c")]
    assert "vision" not in running and "vision" not in fixed  # no vision model here
    assert all(name in fixed for name in running)  # without native tools: listed in it
    assert {str(call.messages[0].content) for call in llm.calls} == {str(first.messages[0].content)}


def test_a_restart_between_two_turns_keeps_the_attachment_ids(make_agent, tools: ToolRegistry,
                                                               photo: Path) -> None:
    first = make_agent(ScriptedLLM([say("A cat.")]))
    image = attach(first, "c", photo, "image")
    first.respond(Turn("c", "my cat", [image]))
    first.memory.close()

    llm = ScriptedLLM([call_tools(("detect", {"attachment_id": "att_1"})), say("One cat.")])
    second = make_agent(llm)  # a new Agent and Memory on the same database, as after a restart
    reply = second.respond(Turn("c", "find the objects in that photo"))

    assert reply.text == "One cat."
    assert tools.get("detect").calls == [{"attachment_id": "att_1"}]  # type: ignore[attr-defined]
    assert "error" not in tool_messages(llm.calls[-1].messages)[-1].content
    assert attach(second, "c", photo, "image").id == "att_2"  # new ids continue the numbering
    assert [a.id for a in second.attachments("c")] == ["att_1", "att_2"]


def test_received_files_stay_within_the_cap_and_reset_deletes_them(make_agent, photo: Path) -> None:
    agent = make_agent(None, attachment_bytes=25)
    store = agent.attachments("c")
    received = []
    for index in range(3):
        path = store.new_path(f"photo {index}.jpg")
        path.write_bytes(b"\xff\xd8\xff" + bytes(7))  # 10 bytes each
        received.append(store.register(path, name=f"photo {index}.jpg"))
    own = store.register(photo)  # the user's own file (the REPL's /attach) is never the store's

    assert [a.path.parent for a in received] == [agent.attachment_dir("c")] * 3
    assert [a.path.exists() for a in received] == [False, True, True]  # the oldest went first
    with pytest.raises(ToolError, match=r"photo 0.jpg \(att_1\): that file is no longer available; send it again"):
        agent.attachments("c").path_of("att_1", {"image"})
    assert agent.attachments("c").path_of("att_3", {"image"}) == received[2].path
    empty = store.new_path("empty.jpg")
    empty.touch()
    with pytest.raises(ToolError, match="empty"):
        store.register(empty)
    assert not empty.exists()  # a received file that is refused is not kept

    annotated = agent.output_dir("c") / "photo-detected.jpg"
    annotated.write_bytes(b"annotated")
    assert agent.output_dir("c") != agent.output_dir("c_")  # distinct ids, distinct folders

    agent.reset("c")
    assert not agent.attachment_dir("c").exists() and own.path.exists()
    assert not annotated.exists()  # the conversation's annotated outputs go too
    assert len(agent.attachments("c")) == 0
    assert agent.attachment_dir("a:b") != agent.attachment_dir("a_b")  # no two conversations share one
    # A text-only chat asked about its attachments (each message's heavy-queue check) leaves nothing behind.
    assert len(agent.attachments("text only")) == 0 and not agent.attachment_dir("text only").exists()


def test_per_conversation_state_stays_bounded(make_agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "TOLD_NO_TOOLS", 10)
    agent = make_agent(ScriptedLLM([say("ok")], repeat_last=True))
    for index in range(50):
        agent.respond(Turn(f"chat {index}", "hi"))
        agent.tell_no_tools_once(f"chat {index}", "llama3")
    assert not agent.tell_no_tools_once("chat 49", "llama3")  # recent ones are still told only once
    assert agent.tell_no_tools_once("chat 0", "llama3")  # the oldest were forgotten: at most 10 kept


def test_each_result_line_is_shown_as_soon_as_its_tool_is_done(make_agent, photo: Path) -> None:
    """Classification takes milliseconds, detection seconds on a CPU: the person sees the first
    line without waiting for the second."""
    llm = ScriptedLLM([say("A cat.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    seen: list[object] = []

    agent.respond(Turn("c", "what is it?", [image]), on_token=seen.append,
                  on_results=lambda results, heard: seen.append(list(results)))

    assert seen[:2] == [["image · tabby 87%"], ["image · tabby 87%", "detect · cat 87%"]]
    assert "".join(map(str, seen[2:])).strip() == "A cat."  # the words after both lines


def test_a_decision_survives_odd_ids_in_history(make_agent, tools: ToolRegistry, photo: Path) -> None:
    """A weak model's call with a list for an id is stored with the turn; later decisions
    still offer what could add something (detection, asked where the cat is)."""
    llm = ScriptedLLM([say('{"name": "detect", "arguments": {"attachment_id": ["att_1"]}}'), say("Sorry."),
                       say('{"tool_calls": []}'), say("Behind the sofa.")], native_tools=False)
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    agent.respond(Turn("c", "look", [image]))

    reply = agent.respond(Turn("c", "where is the cat?"))

    assert reply.text == "Behind the sofa."
    offered = llm.calls[2].format["properties"]["tool_calls"]["items"]["anyOf"]
    assert [c["properties"]["name"]["enum"][0] for c in offered] == ["detect"]


def test_the_model_reads_what_a_text_tool_judged(make_agent, tools: ToolRegistry) -> None:
    llm = ScriptedLLM([say("Negative."), say("It was negative.")], native_tools=False)
    agent = make_agent(llm)
    agent.respond(Turn("c", "Is this review positive: 'Awful service, I will never come back'?"))

    agent.respond(Turn("c", "and why?"))

    notes = [str(m.content) for m in llm.calls[1].messages]
    assert any(n.startswith("[Tool result of sentiment on \u201cAwful service, I will never come back\u201d]: ")
               for n in notes)


def test_a_detection_tool_is_asked_for_by_its_trigger() -> None:
    assert PhotoDetectionTool.asked_for("where is the cat?") and PhotoDetectionTool.asked_for("Что на фото?")
    assert not PhotoDetectionTool.asked_for("thanks, bye")


def test_a_call_on_an_attachment_analysed_earlier_is_not_run(make_agent, tools: ToolRegistry, photo: Path) -> None:
    """A question about something already analysed runs no tool: the result is in the
    conversation; the model is asked to answer at the end of the same prompt."""
    llm = ScriptedLLM([say("A tabby cat."), call_tools(("image", {"attachment_id": "att_1"})),
                       say("It was a tabby cat.")])
    agent = make_agent(llm)
    image = attach(agent, "c", photo, "image")
    agent.respond(Turn("c", "What is this?", [image]))

    reply = agent.respond(Turn("c", "What was in that photo again?"))

    assert (reply.text, reply.results) == ("It was a tabby cat.", [])
    assert len(tools.get("image").calls) == 1  # type: ignore[attr-defined]
    first, second = llm.calls[1:]
    assert second.messages[:len(first.messages)] == first.messages
    assert second.messages[-1].content.startswith("[No tool is needed")
