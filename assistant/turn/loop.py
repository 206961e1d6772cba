"""The loop of one turn: routed tools → the model ⇄ tools → a reply that passed the checks.

The seams, in the order a turn meets them:

1. **routing** (:mod:`~assistant.turn.routing`): the calls the attachments and a quoted
   passage get, whatever the model decides; run by :class:`~assistant.turn.running.ToolRunner`;
2. **the prompt** (:class:`~assistant.turn.prompt.PromptBuilder`): system prompt, history, turn;
3. **asking the model** (:meth:`TurnLoop.ask`): native tool calling, or for a model without it
   a structured decision (:mod:`~assistant.turn.decision`) then a plain answer;
4. **reading the answer** (:mod:`~assistant.turn.parsing`) and **running the calls it asks
   for** (:meth:`~assistant.turn.running.ToolRunner.run_requested`), for a bounded number of rounds;
5. **the checks** (:mod:`~assistant.turn.checks`) on the words, and the **fallback**
   (:mod:`~assistant.turn.fallback`) when there are none to show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from assistant import prompts
from assistant.attachments import Attachment
from assistant.llm import ChatLLM, LLMError, ToolsUnsupported, message_text
from assistant.turn import checks, decision, fallback, routing
from assistant.turn.parsing import Answer, read_answer
from assistant.turn.prompt import PromptBuilder, ToolPrompt, user_text
from assistant.turn.running import ToolRunner
from assistant.turn.state import Call, TurnState
from assistant.turn.stream import Streamer
from assistant.turns import Reply
from tools.registry import ToolRegistry


class TurnLoop:
    """Runs one turn to its reply: ``state`` with the tools of ``tool_prompt``, its prompts from
    ``prompt``, its calls run by ``runner``, at most ``max_rounds`` rounds of calls the model asks
    for, the model's words streamed to ``on_token``. ``tell_no_tools(model)`` says whether the
    person is yet to be told that ``model`` has no native tool calling; ``recent_attachments()``
    are the conversation's attachments (what a decision may offer)."""

    def __init__(self, state: TurnState, tool_prompt: ToolPrompt, prompt: PromptBuilder, runner: ToolRunner, *,
                 max_rounds: int, on_token: Callable[[str], None] | None, tell_no_tools: Callable[[str], bool],
                 recent_attachments: Callable[[], list[Attachment]]) -> None:
        self.state, self.tool_prompt, self.prompt, self.runner = state, tool_prompt, prompt, runner
        self.tools: ToolRegistry = tool_prompt.tools
        self.max_rounds, self.on_token = max_rounds, on_token
        self.tell_no_tools, self.recent_attachments = tell_no_tools, recent_attachments

    def run(self, llm: ChatLLM | None) -> Reply:
        """Routed calls and their follow-ups, then the model (``None``: the tool results alone)."""
        self.runner.run(routing.routed_calls(self.tools, self.state))
        self.runner.run(routing.follow_up_calls(self.tools, self.state))
        self.take_spoken_words()
        if self.state.cancelled:
            return fallback.cancelled_reply(self.state, "", llm_used=llm is not None)
        if llm is None:
            return fallback.tool_only_reply(self.state, None)
        return self.converse(llm)

    def take_spoken_words(self) -> None:
        """What was said in this turn's voice notes enters the user's message: the user's own
        words (answered as if typed), or, forwarded, someone else's words quoted."""
        spoken = routing.spoken_words(self.state)
        if not spoken:
            return
        if not self.state.turn.text.strip():  # a voice note without a caption asks in its words
            self.state.asked = " ".join(spoken.values())
        self.state.set_user(user_text(self.state.turn, self.state.ctx.attachments, spoken))

    def converse(self, llm: ChatLLM) -> Reply:
        """Ask the model, run the calls it makes, until it answers in words (no repeated calls,
        bounded rounds, nothing raw shown, a grounded reply in every case)."""
        state = self.state
        said: list[str] = []  # the model's words for the person, in order
        rounds, retried, offer_tools, failed = 0, False, True, None
        while True:
            stream = Streamer(self.on_token, self.context())
            try:
                answer = self.ask(llm, offer_tools, stream)
            except LLMError as exc:
                spoken = [*said, stream.shown] if stream.shown.strip() else said
                if not spoken:
                    return fallback.tool_only_reply(state, str(exc))
                return fallback.fallback_reply(state, fallback.STOPPED, said=spoken, notes=[str(exc)])
            if state.cancelled:
                return fallback.cancelled_reply(state, "\n\n".join([*said, stream.shown.strip()]).strip(),
                                                llm_used=True)
            read = self.read(answer)
            dropped = self.drop_needless(read)
            failed = checks.first_failure(read.words, self.context())
            stream.finish("" if failed else read.words)
            if offer_tools and (read.calls or read.problems):
                rounds += 1
                if not failed:
                    said.append(read.words)
                offer_tools = self.runner.run_requested(read) and rounds < self.max_rounds
                if not offer_tools:
                    self.instruct("answer")
                continue
            if not failed:
                said.append(read.words)
                break
            if not retried:  # empty, markup, call- or result-shaped: once more, in plain words
                retried, offer_tools = True, False
                self.instruct("no_tool" if dropped else "plain_answer")
                continue
            if said:
                break
            reason = fallback.ROUNDS if rounds >= self.max_rounds else fallback.UNUSABLE
            return fallback.fallback_reply(state, reason, notes=["the model gave no usable answer",
                                                                 f"failed check: {failed}"])
        text = "\n\n".join(said)
        state.messages.append(AIMessage(content=text))
        return state.reply(text, llm_used=True)

    def context(self) -> checks.Context:
        """What the model's words are checked against: the conversation's earlier replies, this
        turn's instructions to the model, what the user asked."""
        told = [str(m.content) for m in self.state.messages[1:] if isinstance(m, HumanMessage)]
        return checks.Context(earlier=self.state.earlier_replies, instructions=[*told, prompts.load("tool_decision")],
                              asked=self.state.asked, json_asked=checks.asks_for_json(self.state.turn.text))

    def ask(self, llm: ChatLLM, offer_tools: bool, stream: Streamer) -> AIMessage:
        """One answer of the model. Every request of a turn has the same system prompt and
        tools (so the model's prompt cache holds); a model offered tools by a structured
        decision (no native tools, or a template that writes the tools into the last user
        message: :meth:`ChatLLM.tool_calling`) first makes that decision (JSON schema enforced
        by its server), then answers in plain text with the same prefix.
        When tools were already routed or no call could add something (:func:`decision.offers`),
        that model answers at once (its words stream without waiting for a decision; a call it
        writes still runs)."""
        if llm.tool_calling().native:
            try:
                return self.request(llm, self.prompt.build(llm.model, native=True), native=True,
                                    tools=self.tool_prompt.schemas, on_token=stream.feed)
            except ToolsUnsupported as exc:
                if self.tell_no_tools(llm.model):
                    self.state.notes.append(str(exc))
        messages = self.prompt.build(llm.model, native=False)
        schema = self.decision_schema() if offer_tools and not self.state.routed else None
        if schema is not None:
            made = self.request(llm, [*messages, HumanMessage(content=prompts.load("tool_decision"))],
                                native=False, format=schema)
            read = self.read(made)
            if read.calls or read.problems:
                return made
        return self.request(llm, messages, native=False, on_token=stream.feed)

    def request(self, llm: ChatLLM, messages: list[BaseMessage], *, native: bool, **options: Any) -> AIMessage:
        """One request to the model; what the server counted of its prompt calibrates the
        token estimate for that model."""
        answer = llm.chat(messages, cancel=self.state.cancel, **options)
        self.prompt.learn(llm.model, messages, native, answer)
        return answer

    def drop_needless(self, read: Answer) -> bool:
        """The model's calls that cannot add anything (:func:`decision.needless`) are dropped,
        not run; True when some were (the model is then asked to answer without tools)."""
        earlier = [m for stored in self.state.history for m in stored.messages]
        kept = [call for call in read.calls
                if not decision.needless(call.name, call.args, self.tools, self.state.asked, earlier)]
        dropped = len(kept) < len(read.calls)
        read.calls = kept
        return dropped

    def decision_schema(self) -> dict[str, Any] | None:
        """The schema of a tool decision now (None: nothing could add something)."""
        history = [m for stored in self.state.history for m in stored.messages]
        offered = decision.offers(self.tools, self.tool_prompt.schemas, self.state.turn.text,
                                  [*history, *self.state.messages], self.recent_attachments())
        return decision.decision_schema(self.tool_prompt.schemas, offered) if offered else None

    def read(self, answer: AIMessage) -> Answer:
        """The answer's calls (native ones, then any written in the text) and its words."""
        read = read_answer(message_text(answer.content), self.tools)
        native = [Call(c["name"], c.get("args") or {}) for c in answer.tool_calls if c["name"] in self.tools]
        read.problems += [f"unknown tool {c['name']!r}; available: {', '.join(self.tools.names)}"
                          for c in answer.tool_calls if c["name"] not in self.tools]
        read.calls = native + read.calls
        return read

    def instruct(self, name: str) -> None:
        """An instruction to the model at the end of the turn (never stored in memory)."""
        self.state.messages.append(HumanMessage(content=prompts.load(name).strip()))
