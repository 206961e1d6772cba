"""The channel's settings (``TELEGRAM_*``, ``ASSISTANT_TELEGRAM_*``), Telegram's limits, and the
timing knobs of the bot."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from assistant.config import Settings
from assistant.voice import VOICE_MODES
from tools.media import MB
from tools.settings import Setting, read_settings

PUBLIC_API = "https://api.telegram.org"
#: The public Bot API serves downloads up to 20 MB; a self-hosted server has no such limit.
PUBLIC_DOWNLOAD_LIMIT = 20 * MB
#: ... and takes uploads from bots up to 50 MB.
PUBLIC_UPLOAD_LIMIT = 50 * MB
#: Telegram's limit on one text message.
MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class BotOptions:
    """Timing and capacity knobs (the defaults suit a small machine; tests shorten them)."""

    album_wait: float = 1.0  # an album is complete this long after its last message
    heavy_jobs: int | None = None  # turns with media at a time (None: ASSISTANT_HEAVY_JOBS)
    draft_interval: float = 0.75  # private chats: at most one draft update this often
    draft_refresh: float = 20.0  # ... and the same draft again this often (drafts last ~30 s)
    edit_interval: float = 3.5  # groups: at most one edit this often (~20 requests a minute)
    action_interval: float = 4.5  # a chat action shows for ~5 s; renew it this often
    concurrent_updates: int = 64
    max_retries: int = 3  # retries after Telegram's flood limit (429 retry_after)
    outbox_retry: float = 2.0  # a reply Telegram did not take is tried again after this long,
    outbox_retry_max: float = 30.0  # ... doubled after each failure up to this


def _entries(text: str) -> tuple[str, ...]:
    return tuple(u for u in text.replace(";", ",").replace(" ", ",").split(",") if u)


def _chats(text: str) -> tuple[int, ...]:
    entries = _entries(text)
    wrong = [entry for entry in entries if not re.fullmatch(r"-\d+", entry)]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not a group's chat id")
    return tuple(int(entry) for entry in entries)


def _voice_mode(text: str) -> str:
    if text.lower() not in VOICE_MODES:
        raise ValueError
    return text.lower()


#: This channel's own settings (the core's are in ``assistant.config``).
SETTINGS = (
    Setting("TELEGRAM_BOT_TOKEN", None),
    Setting("TELEGRAM_API_BASE_URL", PUBLIC_API, check=lambda url: url.rstrip("/")),
    Setting("ASSISTANT_TELEGRAM_ALLOWED_USERS", (), check=_entries,
            allowed="user ids and @usernames separated by commas"),
    Setting("ASSISTANT_TELEGRAM_ALLOWED_CHATS", (), check=_chats,
            allowed="group chat ids (negative numbers such as -1001234567890) separated by commas"),
    Setting("ASSISTANT_TELEGRAM_VOICE", "auto", check=_voice_mode, allowed="off, auto or always"),
)


@dataclass(frozen=True)
class TelegramSettings:
    """What the bot reads besides the core settings."""

    token: str | None = None
    api_base_url: str = PUBLIC_API
    allowed_users: tuple[str, ...] = ()
    allowed_chats: tuple[int, ...] = ()  # groups whose members may all use the bot there
    voice: str = "auto"  # voice replies in chats that have not chosen with /voice

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelegramSettings:
        values, _problems = read_settings(SETTINGS, os.environ if env is None else env)
        return cls(*(values[setting.variable] for setting in SETTINGS))


def download_limit(settings: Settings, telegram: TelegramSettings) -> int:
    """Bytes the bot downloads at most: ASSISTANT_MAX_FILE_MB, and 20 MB on the public Bot API."""
    limit = settings.max_file_bytes
    if telegram.api_base_url.rstrip("/") == PUBLIC_API:
        limit = min(limit, PUBLIC_DOWNLOAD_LIMIT)
    return limit
