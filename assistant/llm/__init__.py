"""Language-model clients behind one protocol (:class:`ChatLLM`). Each client lives in its own
module (``assistant.llm.ollama``, ``assistant.llm.openai``; :func:`make_llm` picks one by
ASSISTANT_LLM_API) and imports its client library only when it is used."""

from assistant.llm.base import (DECISION_TOKENS, STATUS_TIMEOUT, ChatLLM, LLMError, LLMStatus, ModelInfo,
                                ReplyCut, ToolsUnsupported, make_llm, message_text)
from assistant.llm.strategy import Strategy

__all__ = ["DECISION_TOKENS", "STATUS_TIMEOUT", "ChatLLM", "LLMError", "LLMStatus", "ModelInfo", "ReplyCut",
           "Strategy", "ToolsUnsupported", "make_llm", "message_text"]
