"""The Telegram bot: the same assistant as the REPL, for every allowed Telegram user.

Channel I/O only: an incoming message (or album) becomes one :class:`~assistant.turns.Turn`
with its files downloaded and registered as attachments; while the turn works, the answer
streams into a message draft (private chats) or one message edited as it grows (groups), with
the tools' progress and the place in the queue; the agent's reply is then sent as Telegram
HTML, split below the message limit, with its annotated photos and videos. Order, worker
threads, cancel and the heavy-job queue are the session's (:mod:`assistant.session`).

One concern per module:

- :mod:`.app` — `assistant telegram`: configuration checks, the Application builder with its
  one flat block of handlers, polling and the exit status;
- :mod:`.bot` — the handlers' shared state and the bot's life: the access gate, start, stop,
  a rejected token, errors;
- :mod:`.commands` — /start, /help, /reset, /cancel, /tools, /model;
- :mod:`.messages` — a message (or album) becomes a turn: downloads, streaming, the reply;
- :mod:`.incoming` — reading Telegram messages: addressing in groups, mentions, files, albums;
- :mod:`.access` — the allowlist and @username binding (through a small store interface);
- :mod:`.store` — the channel's own tables in the assistant's database, versioned;
- :mod:`.outbox` and :mod:`.delivery` — sending, and keeping what Telegram did not take;
- :mod:`.live` — drafts and edited messages while a turn works;
- :mod:`.markdown` — Markdown as Telegram HTML, split below the message limit;
- :mod:`.ratelimit` — flood limits and network retries;
- :mod:`.settings` — the channel's settings and Telegram's limits.
"""

from adapters.telegram.access import Access
from adapters.telegram.app import build_application, run, serve
from adapters.telegram.bot import TelegramBot
from adapters.telegram.markdown import render_markdown
from adapters.telegram.live import live_chunk
from adapters.telegram.settings import (MB, PUBLIC_API, PUBLIC_DOWNLOAD_LIMIT, SETTINGS, BotOptions,
                                        TelegramSettings, download_limit)

__all__ = ["MB", "PUBLIC_API", "PUBLIC_DOWNLOAD_LIMIT", "SETTINGS", "Access", "BotOptions", "TelegramBot",
           "TelegramSettings", "build_application", "download_limit", "live_chunk", "render_markdown", "run",
           "serve"]
