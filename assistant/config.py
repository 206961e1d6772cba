"""Settings from the environment, validated at start.

The core's settings are declared here; each tool declares its own (and its model's) in its
module, and each channel its own in its adapter. Every variable is documented in the
README's configuration table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.base import ModelSource
from tools.settings import Setting, read_settings
from tools.media import MB
from tools.registry import model_specs, tool_settings
from tools import remote



class ConfigError(ValueError):
    """Settings have values that cannot be used; one line per bad setting, naming the
    variable, the value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _default_db_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path("local-assistant", appauthor=False) / "conversations.sqlite3"


def ollama_url(host: str) -> str:
    """OLLAMA_HOST may be ``host:port`` or ``0.0.0.0``; the client needs a URL."""
    url = _normalise_host(host)
    parts = urlsplit(url)  # raises ValueError for a broken IPv6 address
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) address")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    return url


#: ASSISTANT_TOOL_CALLING's values: ``auto`` decides per model from its chat template and
#: capabilities (see :mod:`assistant.llm.strategy`); the others force one way for every model.
TOOL_CALLING_MODES = ("auto", "native", "structured")


def _tool_calling_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in TOOL_CALLING_MODES:
        raise ValueError("unknown mode")
    return mode


def _base_url(url: str) -> str:
    """ASSISTANT_LLM_BASE_URL: an http(s) URL of an OpenAI-compatible API (``.../v1``)."""
    parts = urlsplit(url)  # raises ValueError for a broken IPv6 address
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    return url.rstrip("/")


#: The language-model servers the assistant can talk to (ASSISTANT_LLM_API).
LLM_APIS = ("ollama", "openai")


def _llm_api(name: str) -> str:
    if name.lower() not in LLM_APIS:
        raise ValueError
    return name.lower()


#: The core's settings (the tools declare their own), by the field each one fills.
CORE_SETTINGS: dict[str, Setting] = {
    "models_dir": Setting("ASSISTANT_MODELS_DIR", None, Path),
    "device": Setting("ASSISTANT_DEVICE", None),
    "max_file_mb": Setting("ASSISTANT_MAX_FILE_MB", 200.0, float, minimum=0.001),
    "attachments_mb": Setting("ASSISTANT_ATTACHMENTS_MB", 500.0, float, minimum=0.001),
    "ollama_host": Setting("OLLAMA_HOST", "http://127.0.0.1:11434", check=ollama_url,
                           allowed="host, host:port or http(s)://host:port"),
    "llm_api": Setting("ASSISTANT_LLM_API", "ollama", check=_llm_api, allowed=" or ".join(LLM_APIS)),
    "llm_base_url": Setting("ASSISTANT_LLM_BASE_URL", "http://127.0.0.1:8000/v1", check=_base_url,
                            allowed="an http(s) URL such as http://host:8000/v1"),
    "llm_api_key": Setting("ASSISTANT_LLM_API_KEY", ""),
    "llm_model": Setting("ASSISTANT_LLM_MODEL", "llama3.1:8b"),
    "llm_num_ctx": Setting("ASSISTANT_LLM_NUM_CTX", 8192, int, minimum=512),
    "llm_timeout": Setting("ASSISTANT_LLM_TIMEOUT", 120.0, float, minimum=0.1),
    "llm_keep_alive": Setting("ASSISTANT_LLM_KEEP_ALIVE", "30m"),
    "tool_calling": Setting("ASSISTANT_TOOL_CALLING", "auto", check=_tool_calling_mode,
                            allowed=" | ".join(TOOL_CALLING_MODES)),
    "llm_max_reply_seconds": Setting("ASSISTANT_LLM_MAX_REPLY_SECONDS", 600.0, float, minimum=1),
    "llm_max_reply_tokens": Setting("ASSISTANT_LLM_MAX_REPLY_TOKENS", 4096, int, minimum=16),
    "max_tool_rounds": Setting("ASSISTANT_MAX_TOOL_ROUNDS", 4, int, minimum=1),
    "db_path": Setting("ASSISTANT_DB", None, Path),
    "heavy_jobs": Setting("ASSISTANT_HEAVY_JOBS", 1, int, minimum=1),
    "tools_url": remote.URL,
    "tools_token": remote.TOKEN,
    "remote_tools": remote.REMOTE_TOOLS,
    "tools_timeout": remote.TIMEOUT,
}


@dataclass(frozen=True)
class Settings:
    """The core's settings and the tools' (declared by each tool), validated at start.

    Channels read their own settings (see ``adapters/``)."""

    models_dir: Path | None = None
    device: str | None = None
    max_file_mb: float = 200.0
    #: Received files (Telegram downloads) kept per conversation, in MB; the oldest go first.
    attachments_mb: float = 500.0
    ollama_host: str = "http://127.0.0.1:11434"
    #: Which server answers: "ollama" (OLLAMA_HOST) or "openai" (any OpenAI-compatible API).
    llm_api: str = "ollama"
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_api_key: str = field(default="", repr=False)  # a secret: never in a repr or a log
    llm_model: str = "llama3.1:8b"
    llm_num_ctx: int = 8192
    llm_timeout: float = 120.0
    llm_keep_alive: str = "30m"
    #: How models are offered tools: auto (per model, from its template), native or structured.
    tool_calling: str = "auto"
    #: The bound of one reply, in seconds and in streamed tokens: past it the reply is cut off.
    llm_max_reply_seconds: float = 600.0
    llm_max_reply_tokens: int = 4096
    max_tool_rounds: int = 4
    db_path: Path | None = None
    #: Turns with media analysed at the same time (the heavy-job queue's width).
    heavy_jobs: int = 1
    #: A tools service to run the tools on (None: here), its token, which tools go there
    #: (empty: all) and how long it may stay silent.
    tools_url: str | None = None
    tools_token: str | None = None
    remote_tools: tuple[str, ...] = ()
    tools_timeout: float = remote.TIMEOUT.default
    #: Each tool model's source, by the model's variable (ASSISTANT_SENTIMENT_MODEL, ...).
    models: Mapping[str, ModelSource] = field(default_factory=dict)
    #: Each tool setting's value, by variable (ASSISTANT_DETECTION_THRESHOLD, ...).
    tool_values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def llm_host(self) -> str:
        """Where the language model's server is: OLLAMA_HOST, or ASSISTANT_LLM_BASE_URL."""
        return self.llm_base_url if self.llm_api == "openai" else self.ollama_host

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def attachments_bytes(self) -> int:
        return int(self.attachments_mb * MB)

    def model(self, variable: str) -> ModelSource:
        """Where the model of ``variable`` comes from (the default if it was not read)."""
        if variable in self.models:
            return self.models[variable]
        spec = next(spec for spec in model_specs() if spec.variable == variable)
        return ModelSource(spec.default, variable)

    def tool_value(self, variable: str) -> Any:
        if variable in self.tool_values:
            return self.tool_values[variable]
        return next(s.default for s in tool_settings() if s.variable == variable)

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
        """The settings, and one message per bad one (each then has its default)."""
        env = os.environ if env is None else env
        core, problems = read_settings(CORE_SETTINGS.values(), env)
        tools, tool_problems = read_settings(tool_settings(), env)
        models_dir: Path | None = core["ASSISTANT_MODELS_DIR"]
        models = {}
        for spec in model_specs():
            explicit = env.get(spec.variable, "").strip()
            if explicit:
                models[spec.variable] = ModelSource(explicit, spec.variable)
            elif models_dir is not None:
                models[spec.variable] = ModelSource(str(models_dir / spec.folder), "ASSISTANT_MODELS_DIR")
            else:
                models[spec.variable] = ModelSource(spec.default, spec.variable)
        values = {name: core[setting.variable] for name, setting in CORE_SETTINGS.items()}
        if values["db_path"] is None:
            values["db_path"] = _default_db_path()
        return cls(**values, models=models, tool_values=tools), problems + tool_problems

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings; :class:`ConfigError` listing every bad one."""
        settings, problems = cls.read(env)
        if problems:
            raise ConfigError(problems)
        return settings


def _normalise_host(host: str) -> str:
    """OLLAMA_HOST may be ``host:port`` or ``0.0.0.0``; the client needs a URL."""
    if "://" not in host:
        host = f"http://{host}"
    scheme, rest = host.split("://", 1)
    hostname = rest.split("/", 1)[0]
    if hostname.startswith("0.0.0.0"):
        rest = "127.0.0.1" + rest[len("0.0.0.0"):]
        hostname = rest.split("/", 1)[0]
    if ":" not in hostname.rsplit("]", 1)[-1]:
        rest = rest.replace(hostname, f"{hostname}:11434", 1)
    return f"{scheme}://{rest}".rstrip("/")
