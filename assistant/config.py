"""Settings from the environment: the one place that reads ``ASSISTANT_*`` variables.

Every variable is documented in the README's configuration table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tools.base import ModelSource

DEFAULT_SENTIMENT_MODEL = "blanchefort/rubert-base-cased-sentiment"
DEFAULT_AUDIO_MODEL = "https://tfhub.dev/google/yamnet/1"
DEFAULT_IMAGE_WEIGHTS = "IMAGENET1K_V1"
DEFAULT_DETECTION_MODEL = "facebook/detr-resnet-50"

#: Sub-folders of ASSISTANT_MODELS_DIR, one per tool (the layout the README documents).
MODELS_DIR_LAYOUT = {
    "sentiment": "sentiment",
    "audio": "yamnet",
    "image": "resnet18",
    "detection": "detr-resnet-50",
}


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


def _default_db_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path("local-assistant", appauthor=False) / "conversations.sqlite3"


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults documented in the README."""

    models_dir: Path | None = None
    sentiment_model: ModelSource = ModelSource(DEFAULT_SENTIMENT_MODEL, "ASSISTANT_SENTIMENT_MODEL")
    audio_model: ModelSource = ModelSource(DEFAULT_AUDIO_MODEL, "ASSISTANT_AUDIO_MODEL")
    image_weights: ModelSource = ModelSource(DEFAULT_IMAGE_WEIGHTS, "ASSISTANT_IMAGE_WEIGHTS")
    detection_model: ModelSource = ModelSource(DEFAULT_DETECTION_MODEL, "ASSISTANT_DETECTION_MODEL")
    device: str | None = None
    max_file_mb: float = 200.0
    detection_threshold: float = 0.7
    video_fps: float = 1.0
    video_max_frames: int = 60
    ollama_host: str = "http://127.0.0.1:11434"
    llm_model: str = "llama3.1:8b"
    llm_num_ctx: int = 8192
    llm_timeout: float = 120.0
    llm_keep_alive: str = "30m"
    max_tool_rounds: int = 4
    db_path: Path | None = None
    telegram_token: str | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    telegram_allowed_users: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        def number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}.") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum}.")
            return value

        models_dir = text("ASSISTANT_MODELS_DIR")
        models_path = Path(models_dir).expanduser() if models_dir else None

        def source(tool: str, variable: str, default: str) -> ModelSource:
            explicit = text(variable)
            if explicit:
                return ModelSource(explicit, variable)
            if models_path is not None:
                return ModelSource(str(models_path / MODELS_DIR_LAYOUT[tool]), "ASSISTANT_MODELS_DIR")
            return ModelSource(default, variable)

        db = text("ASSISTANT_DB")
        allowed = text("ASSISTANT_TELEGRAM_ALLOWED_USERS", "") or ""
        return cls(
            models_dir=models_path,
            sentiment_model=source("sentiment", "ASSISTANT_SENTIMENT_MODEL", DEFAULT_SENTIMENT_MODEL),
            audio_model=source("audio", "ASSISTANT_AUDIO_MODEL", DEFAULT_AUDIO_MODEL),
            image_weights=source("image", "ASSISTANT_IMAGE_WEIGHTS", DEFAULT_IMAGE_WEIGHTS),
            detection_model=source("detection", "ASSISTANT_DETECTION_MODEL", DEFAULT_DETECTION_MODEL),
            device=text("ASSISTANT_DEVICE"),
            max_file_mb=number("ASSISTANT_MAX_FILE_MB", cls.max_file_mb, minimum=0.001),
            detection_threshold=number("ASSISTANT_DETECTION_THRESHOLD", cls.detection_threshold),
            video_fps=number("ASSISTANT_VIDEO_FPS", cls.video_fps, minimum=0.01),
            video_max_frames=int(number("ASSISTANT_VIDEO_MAX_FRAMES", cls.video_max_frames, int, 1)),
            ollama_host=_normalise_host(text("OLLAMA_HOST", cls.ollama_host) or cls.ollama_host),
            llm_model=text("ASSISTANT_LLM_MODEL", cls.llm_model) or cls.llm_model,
            llm_num_ctx=int(number("ASSISTANT_LLM_NUM_CTX", cls.llm_num_ctx, int, 512)),
            llm_timeout=number("ASSISTANT_LLM_TIMEOUT", cls.llm_timeout, minimum=0.1),
            llm_keep_alive=text("ASSISTANT_LLM_KEEP_ALIVE", cls.llm_keep_alive) or cls.llm_keep_alive,
            max_tool_rounds=int(number("ASSISTANT_MAX_TOOL_ROUNDS", cls.max_tool_rounds, int, 1)),
            db_path=Path(db).expanduser() if db else _default_db_path(),
            telegram_token=text("TELEGRAM_BOT_TOKEN"),
            telegram_api_base_url=(text("TELEGRAM_API_BASE_URL", cls.telegram_api_base_url)
                                   or cls.telegram_api_base_url).rstrip("/"),
            telegram_allowed_users=tuple(u for u in allowed.replace(";", ",").replace(" ", ",").split(",") if u),
        )


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
