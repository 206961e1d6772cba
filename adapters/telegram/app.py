"""Wiring: `assistant telegram` checks its configuration, builds the agent and the
python-telegram-bot Application (one builder, one flat block of handlers), and polls until
stopped, with an exit status a supervisor can act on."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from telegram import Update
from telegram.error import InvalidToken, NetworkError
from telegram.ext import Application, ApplicationBuilder, CommandHandler, MessageHandler, TypeHandler, filters
from telegram.request import HTTPXRequest

from adapters.telegram.bot import TOKEN_REJECTED, TelegramBot, leave_at_once
from adapters.telegram.commands import Commands
from adapters.telegram.messages import Messages
from adapters.telegram.ratelimit import RateLimiter
from adapters.telegram.settings import BotOptions, TelegramSettings
from assistant.config import Settings
from assistant.errors import StorageError

if TYPE_CHECKING:
    from assistant.agent import Agent

log = logging.getLogger("assistant.telegram")

# ---------------------------------------------------------------------------------------------
# Entry point

def run(args: argparse.Namespace, settings: Settings, telegram: TelegramSettings | None = None) -> int:
    """`assistant telegram`: check the configuration, build the agent, poll until stopped."""
    telegram = telegram or TelegramSettings.from_env()
    if not telegram.token:
        print("assistant telegram: TELEGRAM_BOT_TOKEN is not set. Create a bot with @BotFather "
              "in Telegram and set TELEGRAM_BOT_TOKEN to the token it gives you.", file=sys.stderr)
        return 2
    allow_all = bool(getattr(args, "allow_all", False))
    if not telegram.allowed_users and not telegram.allowed_chats and not allow_all:
        print("assistant telegram: no allowlist. Set ASSISTANT_TELEGRAM_ALLOWED_USERS to the "
              "Telegram user ids and/or @usernames allowed to use the bot (for example "
              "ASSISTANT_TELEGRAM_ALLOWED_USERS=123456789,@alice), and/or "
              "ASSISTANT_TELEGRAM_ALLOWED_CHATS to the ids of groups whose members may all use "
              "it, or pass --allow-all to serve everyone.", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO, and the URL contains the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # python-telegram-bot's network retry loop logs tracebacks (one even shows the token);
    # its one-line messages say enough.
    logging.getLogger("telegram.ext").addFilter(_without_traceback)

    from assistant.agent import build_agent

    try:
        agent = build_agent(settings)
        application = build_application(settings, agent, telegram, allow_all=allow_all)  # its tables
    except StorageError as exc:  # damaged or not writable: it names the file and what to do
        print(f"assistant telegram: {exc}", file=sys.stderr)
        return 2
    note = agent.warm_up()
    if note:
        log.warning("%s", note)
    log.info("Telegram bot polling %s (Ctrl+C stops it)", telegram.api_base_url)
    return serve(application, telegram)


def serve(application: Application, telegram: TelegramSettings) -> int:
    """Poll until stopped: 0 after Ctrl+C (a turn in progress stops at its next step and
    stores itself; a second Ctrl+C leaves at once, status 130); 2 when Telegram rejects the token (at start, or
    revoked while running: a supervisor can tell and alert); 1 when the Bot API cannot be
    reached at start."""
    try:
        application.run_polling(allowed_updates=[Update.MESSAGE])
    except (SystemExit, KeyboardInterrupt):  # a second Ctrl+C (or SIGTERM) while stopping
        leave_at_once()
    except InvalidToken:
        if not application.bot_data.get(TOKEN_REJECTED):  # at start
            print("assistant telegram: Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather.",
                  file=sys.stderr)
            return 2
    except NetworkError as exc:
        print(f"assistant telegram: cannot reach the Bot API at {telegram.api_base_url} "
              f"({exc}); check the network or TELEGRAM_API_BASE_URL.", file=sys.stderr)
        return 1
    if application.bot_data.get(TOKEN_REJECTED):
        print("assistant telegram: Telegram rejected TELEGRAM_BOT_TOKEN while the bot was running "
              "(401 Unauthorized): the token was revoked or regenerated in @BotFather. Set the "
              "current token and start the bot again; replies not yet delivered are sent then.",
              file=sys.stderr)
        return 2
    return 0


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = None
    record.exc_text = None
    return True


def build_application(settings: Settings, agent: Agent, telegram: TelegramSettings, *,
                      allow_all: bool = False, options: BotOptions = BotOptions()) -> Application:
    """The python-telegram-bot Application with every handler of the bot."""
    api = telegram.api_base_url.rstrip("/")
    bot = TelegramBot(agent, settings, telegram, allow_all=allow_all, options=options)
    commands, messages = Commands(bot), Messages(bot)
    application = (
        ApplicationBuilder()
        .token(telegram.token or "")
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .concurrent_updates(options.concurrent_updates)
        .rate_limiter(RateLimiter(max_retries=options.max_retries))
        .request(Request(bot.token_rejected, connection_pool_size=256, read_timeout=30,
                         media_write_timeout=120))
        .get_updates_request(Request(bot.token_rejected, connection_pool_size=1))
        .post_init(bot.post_init)
        .post_stop(bot.post_stop)
        .build()
    )
    application.add_handler(TypeHandler(Update, bot.gate), group=-1)
    application.add_handlers([
        CommandHandler("start", commands.start),
        CommandHandler("help", commands.help),
        CommandHandler("reset", commands.reset),
        CommandHandler("cancel", commands.cancel),
        CommandHandler("tools", commands.tools),
        CommandHandler("model", commands.model),
        CommandHandler("voice", commands.voice),
        MessageHandler(filters.COMMAND, commands.unknown),
        MessageHandler(filters.UpdateType.MESSAGE & ~filters.COMMAND, messages.on_message),
    ])
    application.add_error_handler(bot.on_error)
    return application


class Request(HTTPXRequest):
    """python-telegram-bot's HTTP client, telling ``on_unauthorized`` when the Bot API answers
    401 (python-telegram-bot's polling then only logs "Invalid token" and stops polling)."""

    def __init__(self, on_unauthorized: Callable[[], None], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_unauthorized = on_unauthorized

    async def do_request(self, *args: object, **kwargs: object) -> tuple[int, bytes]:
        code, payload = await super().do_request(*args, **kwargs)  # type: ignore[arg-type]
        if code == 401:
            self.on_unauthorized()
        return code, payload
