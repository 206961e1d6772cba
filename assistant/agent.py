"""The assistant's public face: ``respond(turn) → Reply``, the model of each conversation, its
status, reset and warm-up. How one turn runs is :mod:`assistant.turn`: every attachment is
first analysed by its matching tools, then the model may call further tools for a bounded number
of rounds and writes the answer; without a language model (down, not pulled, too slow, or
``use_llm=False``) the same tool results are rendered from a template, clearly marked as such.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from assistant.errors import StorageError
from assistant.llm import ChatLLM, LLMError, LLMStatus, ModelInfo
from assistant.memory import Memory
from assistant.recent import RecentSet
from assistant.turn.fallback import NO_LLM_NOTE
from assistant.turn.loop import TurnLoop
from assistant.turn.prompt import PromptBuilder, TokenCalibration, ToolPrompt, user_text
from assistant.turn.running import ResultsCallback, ToolRunner
from assistant.turn.state import TurnState
from assistant.turns import Reply, Turn
from tools.base import Progress, ToolContext, short_reason
from tools.registry import ToolRegistry

__all__ = ["NO_LLM_NOTE", "Agent", "ResultsCallback", "build_agent"]

log = logging.getLogger(__name__)

#: Conversations (with their model) remembered as told that the model has no native tools.
TOLD_NO_TOOLS = 1024


class Agent:
    """One assistant shared by all conversations of an adapter. Turns of different
    conversations may run concurrently; those of one conversation come one at a time, in order
    (:class:`assistant.session.Session` sees to that for every channel)."""

    def __init__(self, tools: ToolRegistry, memory: Memory, llm: ChatLLM | None, *,
                 output_root: Path, num_ctx: int = 8192, max_tool_rounds: int = 4,
                 max_file_bytes: int | None = None, status_host: str = "", status_model: str = "",
                 attachment_root: Path | None = None, attachment_bytes: int | None = None) -> None:
        self.tools = tools
        self.memory = memory
        self.llm = llm
        self.output_root = Path(output_root)
        #: Where received files are kept, one folder per conversation (default: beside the outputs).
        self.attachment_root = Path(attachment_root or self.output_root.parent / "attachments")
        self.attachment_bytes = attachment_bytes
        self.num_ctx = num_ctx
        self.max_tool_rounds = max_tool_rounds
        self.max_file_bytes = max_file_bytes
        self._status_host, self._status_model = status_host, status_model
        self._lock = threading.Lock()
        self._told_no_tools: RecentSet[tuple[str, str]] = RecentSet(TOLD_NO_TOOLS)
        #: The tools' prompt, built once for each set of tools unavailable with a model (by it).
        self._tool_prompts: dict[frozenset[str], ToolPrompt] = {}
        self.calibration = TokenCalibration()  # by model: server-counted / estimated prompt tokens

    # -- the fixed interface -------------------------------------------------------------

    def attachments(self, conversation_id: str) -> AttachmentStore:
        """The conversation's attachments (kept in memory's database): adapters register files
        here, and put the files they receive at :meth:`AttachmentStore.new_path`."""
        return AttachmentStore(self.max_file_bytes, memory=self.memory, conversation_id=conversation_id,
                               folder=self.attachment_dir(conversation_id),
                               folder_bytes=self.attachment_bytes)

    def reset(self, conversation_id: str) -> None:
        """Forget the conversation's memory and attachments (and delete the files it received).
        Its model stays."""
        with self._lock:
            self._told_no_tools.discard((conversation_id, self.model_of(conversation_id)))
        self.memory.clear(conversation_id)
        shutil.rmtree(self.attachment_dir(conversation_id), ignore_errors=True)
        shutil.rmtree(self.output_root / _folder(conversation_id), ignore_errors=True)

    def warm_up(self) -> str | None:
        """Check and load the language model, and have it read the system prompt (with the
        tools, for native tool calling) once, so the first turn reads only its own tokens; one
        sentence if something is wrong. Never raises."""
        if self.llm is None:
            return None
        try:
            return self.llm.warm_up(self.system_prompt, self.schemas)
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop the adapter
            log.exception("warm-up failed")
            return f"Could not check the language model: {exc}"

    def llm_status(self, conversation_id: str | None = None) -> LLMStatus:
        """The language model's status: the conversation's model (the default without one)."""
        llm = self.llm_for(conversation_id) if conversation_id is not None else self.llm
        if llm is None:
            return LLMStatus(self._status_host, self._status_model, reachable=False,
                             model_available=False, tool_calling="unknown",
                             error="The language model is switched off (no-LLM mode).")
        try:
            return llm.status()
        except Exception as exc:  # noqa: BLE001
            return LLMStatus(self._status_host, llm.model, False, False, "unknown", str(exc))

    # -- the model of each conversation --------------------------------------------------

    def model_of(self, conversation_id: str) -> str:
        """The conversation's model: the one chosen with :meth:`set_model`, else the default."""
        default = self.llm.model if self.llm is not None else self._status_model
        return self.memory.conversation_model(conversation_id) or default

    def llm_for(self, conversation_id: str) -> ChatLLM | None:
        """The client of the conversation's model (None in no-LLM mode)."""
        if self.llm is None:
            return None
        chosen = self.memory.conversation_model(conversation_id)
        return self.llm.with_model(chosen) if chosen and chosen != self.llm.model else self.llm

    def tools_model(self, conversation_id: str | None = None) -> str | None:
        """The conversation's model (the default one without a conversation) as its tools see
        it: None in the no-LLM mode (no tool may then call the model server)."""
        if self.llm is None:
            return None
        return self.model_of(conversation_id) if conversation_id is not None else self.llm.model

    def unavailable_tools(self, conversation_id: str | None = None) -> dict[str, str]:
        """The tools that cannot run in the conversation now (a vision tool without a vision
        model), each with the sentence that says how to enable it."""
        return self.tools.unavailable(self.tools_model(conversation_id))

    def tool_prompt(self, llm_model: str | None) -> ToolPrompt:
        """The tools as the language model ``llm_model`` reads them: without those unavailable
        with it (built once for each set of those)."""
        off = frozenset(self.tools.unavailable(llm_model))
        with self._lock:
            prompt = self._tool_prompts.get(off)
            if prompt is None:
                prompt = self._tool_prompts[off] = ToolPrompt(self.tools, off)
        return prompt

    def models(self) -> list[ModelInfo]:
        """The models the language model's server has; :class:`LLMError` if it cannot say."""
        if self.llm is None:
            raise LLMError("The language model is switched off (no-LLM mode).")
        return self.llm.models()

    @property
    def server(self) -> str:
        """What serves the language model, in words ("Ollama" in no-LLM mode too)."""
        return self.llm.server if self.llm is not None else "Ollama"

    def set_model(self, conversation_id: str, name: str) -> ModelInfo:
        """Switch the conversation to the server's model ``name`` (``llama3`` is
        ``llama3:latest``, as in Ollama), kept across restarts; returns that model.
        :class:`LLMError` saying why for a model the server does not have."""
        name = name.strip()
        models = self.models()
        match = next((model for model in models if model.name in (name, f"{name}:latest")), None)
        if match is None:
            listed = ", ".join(model.name for model in models) or "none"
            if self.server == "Ollama":
                raise LLMError(f"There is no model {name!r} in Ollama (it has: {listed}); "
                               f"`ollama pull {name}` fetches it.")
            raise LLMError(f"There is no model {name!r} on {self.server} (it has: {listed}).")
        assert self.llm is not None  # models() said so
        default = match.name == self.llm.model
        self.memory.set_conversation_model(conversation_id, None if default else match.name)
        return match

    def respond(self, turn: Turn, *, on_token: Callable[[str], None] | None = None,
                on_progress: Progress | None = None, on_results: ResultsCallback | None = None,
                cancel: threading.Event | None = None) -> Reply:
        """Answer one turn. Blocking; never raises for problems a person can act on.

        ``on_token`` receives the model's text as it streams; ``Reply.text`` is always the
        complete answer (adapters re-render it when the turn ends). ``on_results`` receives
        the turn's result lines and transcripts so far (as :attr:`Reply.results` and
        :attr:`Reply.heard`) each time a tool has run, so a channel can show what was measured
        before the model has said a word."""
        state: TurnState | None = None
        turn_id: int | None = None
        try:  # starting the turn creates the output folder and reads memory: inside too
            state, turn_id = self._start(turn, on_progress, cancel)
            tool_prompt = self.tool_prompt(state.ctx.llm_model)
            loop = TurnLoop(state, tool_prompt, PromptBuilder(tool_prompt, self.calibration, self.num_ctx, state),
                            ToolRunner(self.tools, state, on_results), max_rounds=self.max_tool_rounds,
                            on_token=on_token,
                            tell_no_tools=lambda model: self.tell_no_tools_once(turn.conversation_id, model),
                            recent_attachments=lambda: list(self.attachments(turn.conversation_id)))
            reply = loop.run(self.llm_for(turn.conversation_id))
        except Exception as exc:  # noqa: BLE001 - last resort: a reply, not a crash
            said = isinstance(exc, StorageError)  # the log has which file and what to do
            log.error("turn failed: %s", exc, exc_info=not said)
            reason = f"{exc.brief}; see the log" if isinstance(exc, StorageError) else short_reason(exc)
            reply = Reply(text=f"Something went wrong while answering: {reason}",
                          media=state.media if state is not None else [],
                          notes=["internal error; see the log"], llm_used=False)
        if state is not None and turn_id is not None:
            try:
                self.memory.finish_turn(turn.conversation_id, turn_id, state.to_store(reply))
            except Exception as exc:  # noqa: BLE001 - the person still gets the answer
                log.error("could not store the turn: %s", exc, exc_info=not isinstance(exc, StorageError))
                reply.notes.append("this turn could not be stored; see the log")
        return reply

    def _start(self, turn: Turn, on_progress: Progress | None,
               cancel: threading.Event | None) -> tuple[TurnState, int]:
        """A turn's state (its tools' context, the user's message, the conversation's history
        before it), and its id in memory, which has its start from now on."""
        ctx = ToolContext(attachments=self.attachments(turn.conversation_id),
                          output_dir=self.output_dir(turn.conversation_id), progress=on_progress,
                          cancel=cancel, question=turn.text, llm_model=self.tools_model(turn.conversation_id))
        user = user_text(turn, ctx.attachments)
        history = self.memory.turns(turn.conversation_id)
        turn_id = self.memory.begin_turn(turn.conversation_id, [HumanMessage(content=user)])
        state = TurnState(turn, ctx, user, history, cancel,
                          save=lambda messages: self.memory.save_turn(turn_id, messages))
        return state, turn_id

    # -- helpers used by a turn ----------------------------------------------------------

    def output_dir(self, conversation_id: str) -> Path:
        path = self.output_root / _folder(conversation_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """The function schemas of the tools that run with the default model, as sent with
        native tool calls."""
        return self.tool_prompt(self.tools_model()).schemas

    @property
    def schema_tokens(self) -> int:
        return self.tool_prompt(self.tools_model()).schema_tokens

    def system_prompt(self, native: bool) -> str:
        """The default model's system prompt (:meth:`ToolPrompt.system`)."""
        return self.tool_prompt(self.tools_model()).system(native)

    def token_ratio(self, model: str) -> float:
        """How many tokens ``model``'s server counts per estimated token (at least 1)."""
        return self.calibration.ratio(model)

    def tell_no_tools_once(self, conversation_id: str, model: str) -> bool:
        """True the first time this conversation meets ``model`` without native tools."""
        with self._lock:
            return self._told_no_tools.add((conversation_id, model))

    def attachment_dir(self, conversation_id: str) -> Path:
        """The folder of the files the conversation received (one per conversation id)."""
        return self.attachment_root / _folder(conversation_id)


def _folder(conversation_id: str) -> str:
    """A conversation's folder name: readable, and unique (``a:b`` and ``a_b`` differ)."""
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:10]
    readable = re.sub(r"[^\w.-]", "_", conversation_id)[:60] or "default"
    return f"{readable}-{digest}"


def build_agent(settings: Settings, *, use_llm: bool = True) -> Agent:
    """The agent with every tool, the language model ASSISTANT_LLM_API names (unless ``use_llm``
    is False) and SQLite memory."""
    from assistant.llm import make_llm
    from assistant.runtime import build_tools

    llm: ChatLLM | None = make_llm(settings) if use_llm else None
    db_path = settings.db_path or Settings.from_env({}).db_path
    assert db_path is not None  # from_env always sets it
    return Agent(build_tools(settings), Memory(db_path), llm,
                 output_root=db_path.parent / "outputs", num_ctx=settings.llm_num_ctx,
                 max_tool_rounds=settings.max_tool_rounds,
                 max_file_bytes=settings.max_file_bytes,
                 status_host=settings.llm_host, status_model=settings.llm_model,
                 attachment_root=db_path.parent / "attachments",
                 attachment_bytes=settings.attachments_bytes)
