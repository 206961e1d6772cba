"""The bot's shared state and life: access checks before every handler, start (commands
registered, interrupted turns and kept messages), stop, a token Telegram rejects, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from telegram import BotCommand, Message, Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import Forbidden, TelegramError
from telegram.ext import Application, ApplicationHandlerStop, ContextTypes

from adapters.telegram.access import Access, SQLiteUsernames
from adapters.telegram.commands import COMMANDS
from adapters.telegram.delivery import Delivery
from adapters.telegram.incoming import CONVERSATION_PREFIX, addressed, conversation_id
from adapters.telegram.outbox import Outbox
from adapters.telegram.settings import PUBLIC_API, BotOptions, TelegramSettings, download_limit
from adapters.telegram.store import open_store
from assistant.config import Settings
from assistant.session import Session
from assistant.turns import interrupted_notice
from assistant.voice import VoiceConfig, VoiceReplies

if TYPE_CHECKING:
    from assistant.agent import Agent

log = logging.getLogger("assistant.telegram")

#: ``application.bot_data`` key: set when Telegram rejected the token while the bot ran.
TOKEN_REJECTED = "token_rejected"


class TelegramBot:
    """What the handlers share (the agent, access, the session's order, the way out) and the
    bot's life: start, stop, a rejected token, errors."""

    def __init__(self, agent: Agent, settings: Settings, telegram: TelegramSettings, *,
                 allow_all: bool = False, options: BotOptions = BotOptions(),
                 voice: VoiceConfig | None = None) -> None:
        self.agent = agent
        self.options = options
        store = open_store(agent.memory.path)  # the channel's tables, beside the conversations
        self.access = Access(telegram.allowed_users, SQLiteUsernames(store),
                             allowed_chats=telegram.allowed_chats, allow_all=allow_all)
        self.download_limit = download_limit(settings, telegram)
        self.public_api = telegram.api_base_url.rstrip("/") == PUBLIC_API
        self.session = Session(agent, heavy_jobs=options.heavy_jobs)
        self.delivery = Delivery(Outbox(store), options, public_api=self.public_api)
        #: Voice replies: each chat's mode (ASSISTANT_TELEGRAM_VOICE until it chooses) and the speaker.
        self.voice = VoiceReplies(voice or VoiceConfig.read(os.environ, settings.models_dir)[0],
                                  agent.memory, telegram.voice)
        self._application: Application | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def post_init(self, application: Application) -> None:
        self._application = application
        await application.bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS])
        log.info("Serving as @%s", application.bot.username)
        self.delivery.start(application.bot)  # what an earlier run could not deliver goes first
        for conversation in self.agent.memory.open_conversations(CONVERSATION_PREFIX):
            for text in self.agent.memory.recover_interrupted(conversation):
                chat_id = int(conversation.rpartition(":")[2])
                with contextlib.suppress(TelegramError):
                    await application.bot.send_message(chat_id, interrupted_notice(text))

    async def post_stop(self, application: Application) -> None:
        """Before the process leaves: every turn still in progress stops at its next step and
        stores itself (a worker thread still inside native code, torch or PyAV, when the
        interpreter shuts down aborts the process), then the outbox stops. Another stop signal
        meanwhile leaves at once (:func:`leave_at_once`)."""
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, lambda *_: leave_at_once())
        await asyncio.to_thread(self.session.stop)
        await self.delivery.stop()

    def token_rejected(self) -> None:
        """Telegram answered 401 (the token was revoked or regenerated): nothing the bot does
        can work any more, so it stops (:func:`serve` then exits with status 2)."""
        application = self._application
        if application is None or application.bot_data.get(TOKEN_REJECTED):
            return
        application.bot_data[TOKEN_REJECTED] = True
        log.error("Telegram rejected the bot's token (401 Unauthorized); stopping")
        if application.running:
            application.stop_running()

    # -- access ---------------------------------------------------------------------------------

    async def gate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Runs before every handler: only messages addressed to the bot go on (in a group, the
        others are chatter, silently ignored), and only from allowed users or chats; strangers
        get one polite reply and nothing else. A group's album is judged once it is complete
        (:meth:`Messages.on_message`): its caption may come with any of its messages."""
        message = update.message
        if message is not None and message.media_group_id and message.chat.type != ChatType.PRIVATE:
            return
        if message is None or not await self.admitted(context, [message]):
            raise ApplicationHandlerStop

    async def admitted(self, context: ContextTypes.DEFAULT_TYPE, messages: list[Message]) -> bool:
        """Whether the bot answers ``messages`` (one message, or an album): one of them is
        addressed to the bot, by someone allowed (a stranger is told once)."""
        message = next((m for m in messages if addressed(m, context.bot)), None)
        if message is None:
            return False
        user, chat = message.from_user, message.chat
        if user is None:
            return False
        if self.access.allows(user, chat.id):
            return True
        if self.access.first_refusal(user, chat.id):
            log.info("Refused Telegram user %s in chat %s (not in ASSISTANT_TELEGRAM_ALLOWED_USERS "
                     "or _CHATS)", user.id, chat.id)
            if chat.type == ChatType.PRIVATE:
                ids, add = f"Your Telegram user id is {user.id}", "it to ASSISTANT_TELEGRAM_ALLOWED_USERS"
            else:
                ids = f"Your Telegram user id is {user.id}, this group's id is {chat.id}"
                add = ("yours to ASSISTANT_TELEGRAM_ALLOWED_USERS, or the group's to "
                       "ASSISTANT_TELEGRAM_ALLOWED_CHATS,")
            await context.bot.send_message(chat.id, f"Sorry, this is a private assistant. {ids}. If you "
                                           f"know the owner, ask them to add {add} and restart the bot.")
        return False

    async def by_admin(self, context: ContextTypes.DEFAULT_TYPE, message: Message) -> bool:
        """Whether ``message`` comes from an admin of its group (anyone, in a private chat)."""
        chat = message.chat
        if chat.type == ChatType.PRIVATE:
            return True
        if message.sender_chat is not None and message.sender_chat.id == chat.id:
            return True  # an anonymous admin, writing as the group
        try:
            member = await context.bot.get_chat_member(chat.id, message.from_user.id)
        except TelegramError as exc:
            log.warning("Could not ask Telegram whether user %s is an admin of chat %s (%s)",
                        message.from_user.id, chat.id, exc)
            return False
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    # -- errors ---------------------------------------------------------------------------------

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log with an error id; tell the user that id in a short apology."""
        error_id = secrets.token_hex(4)
        error = context.error
        if not isinstance(update, Update):  # fetching updates failed: python-telegram-bot retries
            log.warning("Telegram error %s: %s: %s", error_id, type(error).__name__, error)
            return
        log.error("Error %s while handling update %s", error_id, update.update_id, exc_info=error)
        if update.effective_chat is None or isinstance(error, Forbidden):
            return
        try:
            await context.bot.send_message(
                update.effective_chat.id,
                f"Sorry, something went wrong on my side (error id {error_id}). Please try again.")
        except TelegramError as exc:
            log.warning("Could not send the apology for error %s: %s", error_id, exc)

    # -- helpers --------------------------------------------------------------------------------

    def in_order(self, chat_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        """The chat's messages and commands, one at a time in the order they came."""
        return self.session.ordered(conversation_id(chat_id))

    async def send_text(self, context: ContextTypes.DEFAULT_TYPE, chat_id: int, text: str,
                        *, plain: bool = False) -> None:
        """``text`` (Markdown unless ``plain``) to the chat, through the outbox if need be."""
        await self.delivery.send_text(context.bot, chat_id, text, plain=plain)


def leave_at_once() -> NoReturn:
    """Leave now, without the interpreter's shutdown, which aborts (SIGABRT) while a turn's
    worker thread is inside native code (torch, PyAV); that turn is told as interrupted at the
    next start, and what the outbox holds is sent then."""
    log.warning("Stopped at once (a second stop signal); a reply in progress is told as "
                "interrupted at the next start")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
