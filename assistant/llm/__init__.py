"""Language-model clients behind one protocol (:class:`ChatLLM`). Each client lives in its own
module (``assistant.llm.ollama``) and imports its client library only when it is used."""

from assistant.llm.base import (DECISION_TOKENS, STATUS_TIMEOUT, ChatLLM, LLMError, LLMStatus, ModelInfo,
                                ToolsUnsupported, message_text)
from assistant.llm.strategy import Strategy

__all__ = ["DECISION_TOKENS", "STATUS_TIMEOUT", "ChatLLM", "LLMError", "LLMStatus", "ModelInfo",
           "Strategy", "ToolsUnsupported", "message_text"]
