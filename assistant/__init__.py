"""Local assistant: a Llama 3 agent (via Ollama) that calls perception tools."""

__version__ = "0.1.0"
