"""How tools reach a model: natively (the server's ``tools``) or by a structured decision.

Chosen once per model from where its chat template writes the tool schemas:

- **in the system block** (Qwen 2.5 and 3, Hermes 3): native tool calling. The block is the
  same in every request, so the server's prompt cache keeps it and each request reads only its
  own new tokens.
- **with the last user message** (Ollama's llama3.1, llama3.2 and llama3.3; Mistral, which
  writes even the system prompt there): the **structured decision**. Such a template re-writes
  the whole tool block into whatever message is last, so every request re-reads it (hundreds
  of tokens), a request after tool results diverges from the cached prompt at the user's
  message, and the template's own words ("respond with a JSON for a function call") make the
  model call tools on "thanks". Instead the tools are listed once in a stable system prompt,
  a decision constrained by a JSON schema is asked for only when a tool could add something,
  and the answer is a plain request with the same prefix.
- **no tools capability**: the structured decision (the only way).

A server that shows no template (an OpenAI-compatible one) gets native tool calling unless the
model lacks it. ``ASSISTANT_TOOL_CALLING=native|structured`` overrides the choice for every model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Where a template writes the tool schemas.
SYSTEM_BLOCK, LAST_MESSAGE = "system block", "last user message"

#: A Go template action: ``{{ ... }}`` with its optional trim markers.
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
#: Names a template's tool list (``.Tools`` or ``$.Tools``).
_TOOLS = re.compile(r"\$?\.Tools\b")


@dataclass(frozen=True)
class Strategy:
    """How a model is offered tools, and why (shown by ``/model`` and ``assistant doctor``)."""

    native: bool
    reason: str

    @property
    def name(self) -> str:
        """``native`` or ``structured`` (what /model and doctor show, with the reason)."""
        return "native" if self.native else "structured"


def tools_placement(template: str | None) -> str | None:
    """Where ``template`` (Ollama's Go template) writes the tool schemas: :data:`SYSTEM_BLOCK`
    when it writes them before (outside) its loop over the messages, :data:`LAST_MESSAGE` when
    inside it (with a message, as llama3.x and Mistral do); None when it writes no tools."""
    blocks: list[bool] = []  # for each open block: whether it loops over the messages
    found: str | None = None
    for action in _ACTION.findall(template or ""):
        words = action.split()
        keyword = words[0] if words else ""
        if keyword in ("if", "with", "block", "define"):
            blocks.append(False)
        elif keyword == "range":
            blocks.append(".Messages" in action)
            if _TOOLS.search(action):
                found = LAST_MESSAGE if any(blocks[:-1]) else found or SYSTEM_BLOCK
        elif keyword == "end":
            if blocks:
                blocks.pop()
        elif keyword != "else" and _TOOLS.search(action):  # {{ .Tools }}, {{ json $.Tools }}
            found = LAST_MESSAGE if any(blocks) else found or SYSTEM_BLOCK
    return found


def choose(setting: str, template: str | None, capabilities: Sequence[str] | None) -> Strategy:
    """The strategy for a model with ``template`` and ``capabilities`` (None: not reported),
    under ASSISTANT_TOOL_CALLING ``setting``."""
    if setting == "native":
        return Strategy(True, "set by ASSISTANT_TOOL_CALLING=native")
    if setting == "structured":
        return Strategy(False, "set by ASSISTANT_TOOL_CALLING=structured")
    if capabilities is not None and "tools" not in capabilities:
        return Strategy(False, "the model has no native tool calling")
    placement = tools_placement(template)
    if placement == LAST_MESSAGE:
        return Strategy(False, "its template writes the tool schemas into the last user message, "
                               "so every request would re-read them")
    if placement == SYSTEM_BLOCK:
        return Strategy(True, "its template keeps the tool schemas in the system block")
    if capabilities is None:
        return Strategy(True, "the server does not say; tried natively first")
    return Strategy(True, "the model has native tool calling")
