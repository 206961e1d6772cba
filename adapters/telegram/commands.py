"""The bot's commands: /start, /help, /reset, /cancel, /tools, /model, /voice."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from telegram import Bot, Chat, Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from adapters.telegram.incoming import command_target, conversation_id
from assistant.errors import LLMError
from assistant.voice import VOICE_MODES
from tools.media import megabytes

if TYPE_CHECKING:
    from adapters.telegram.bot import TelegramBot

COMMANDS = (
    ("start", "what this bot does"),
    ("help", "how to use it"),
    ("reset", "forget this conversation"),
    ("cancel", "stop the reply in progress"),
    ("tools", "the tools I can use"),
    ("model", "show or switch the language model"),
    ("voice", "voice replies: off, auto or always"),
)

HELP_TEXT = """\
I'm a local assistant. Send me:
• text — ask anything, or ask for the mood (sentiment) of a text;
• a photo (or an album) — I say what's in it and can find objects;
• a voice note — I answer what you say (and say what else I hear);
• audio — I say what sounds I hear, and what is said in it;
• a video — I find the objects in it.
Add a caption to say what you want to know about a file.

Commands: /cancel stops the reply in progress, /reset forgets this conversation, /tools lists
what I can use, /model shows or switches the language model of this chat, /voice says when I
answer with a voice note too (off, auto: when you send one, always), /help shows this."""

GROUP_HELP = """\
In this group I answer when you mention @{username}, reply to one of my messages, or send a
command. Mention me in reply to a photo, voice note, audio or video to ask about it. The group
is one conversation; /reset, /model NAME and /voice MODE are for its admins. This group's chat id (for
ASSISTANT_TELEGRAM_ALLOWED_CHATS) is {chat_id}."""

VOICE_MODE_TEXT = {
    "off": "Voice replies are off: I answer in text only. /voice auto or /voice always turns them on.",
    "auto": "Voice replies are on for voice notes: when you send one, I answer with a voice note "
            "too (after the text). /voice always speaks every reply; /voice off stops them.",
    "always": "Every reply comes as a voice note too (after the text). /voice auto speaks only the "
              "answers to voice notes; /voice off stops them.",
}


class Commands:
    """The bot's commands (registered with Telegram from :data:`COMMANDS`); each waits its turn
    in the chat's order, except /cancel."""

    def __init__(self, shared: TelegramBot) -> None:
        self.shared = shared


    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start: a greeting and what the bot does."""
        async with self.shared.in_order(update.effective_chat.id):
            name = update.effective_user.first_name if update.effective_user else "there"
            await self.shared.send_text(context, update.effective_chat.id,
                                        f"Hi {name}! {self._help(update.effective_chat, context.bot)}", plain=True)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/help: what the bot does, and the largest file it takes."""
        async with self.shared.in_order(update.effective_chat.id):
            limit = f"Files up to {megabytes(self.shared.download_limit)}."
            await self.shared.send_text(context, update.effective_chat.id,
                                        f"{self._help(update.effective_chat, context.bot)}\n\n{limit}", plain=True)

    @staticmethod
    def _help(chat: Chat, bot: Bot) -> str:
        if chat.type == ChatType.PRIVATE:
            return HELP_TEXT
        return f"{HELP_TEXT}\n\n{GROUP_HELP.format(username=bot.username, chat_id=chat.id)}"

    async def reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/reset: forget this chat's conversation and files (a group's admins only)."""
        chat_id = update.effective_chat.id
        async with self.shared.in_order(chat_id):
            if not await self.shared.by_admin(context, update.message):
                await self.shared.send_text(context, chat_id, "Sorry, only this group's admins can reset "
                                            "its conversation.", plain=True)
                return
            await asyncio.to_thread(self.shared.agent.reset, conversation_id(chat_id))
            await self.shared.send_text(context, chat_id, "Done: I've forgotten this conversation.", plain=True)

    async def cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/cancel: stop the reply in progress (not in the chat's line, which that reply holds)."""
        chat_id = update.effective_chat.id
        if not self.shared.session.cancel(conversation_id(chat_id)):
            await self.shared.send_text(context, chat_id, "There is no reply in progress to cancel.", plain=True)

    async def tools(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/tools: the tools the agent can use."""
        async with self.shared.in_order(update.effective_chat.id):
            agent = self.shared.agent
            off = await asyncio.to_thread(agent.unavailable_tools, conversation_id(update.effective_chat.id))
            lines = [f"• **{tool.name}**: {tool.headline()}"
                     + (f" (off: {off[tool.name]})" if tool.name in off else "") for tool in agent.tools]
            await self.shared.send_text(context, update.effective_chat.id,
                                        "I can use these tools:\n" + "\n".join(lines))

    async def model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/model: this chat's model and the models Ollama has; /model NAME switches to NAME."""
        chat_id = update.effective_chat.id
        conversation = conversation_id(chat_id)
        name = " ".join(context.args or ()).strip()
        async with self.shared.in_order(chat_id):
            if name and not await self.shared.by_admin(context, update.message):
                await self.shared.send_text(context, chat_id, "Sorry, only this group's admins can switch "
                                            "its model; /model shows which one it uses.", plain=True)
                return
            try:
                if name:
                    chosen = await asyncio.to_thread(self.shared.agent.set_model, conversation, name)
                    text = f"This chat now uses `{chosen.name}`: {chosen.describe()}."
                else:
                    text = await asyncio.to_thread(self._models_text, conversation)
            except LLMError as exc:
                text = str(exc)
            await self.shared.send_text(context, chat_id, text)

    async def voice(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/voice: when this chat's replies are spoken; /voice off|auto|always chooses (kept)."""
        chat_id = update.effective_chat.id
        conversation = conversation_id(chat_id)
        choice = " ".join(context.args or ()).strip().lower()
        voice = self.shared.voice
        async with self.shared.in_order(chat_id):
            if choice and choice not in VOICE_MODES:
                text = "Use /voice off, /voice auto (a voice note gets a voice reply) or /voice always."
            elif choice and not await self.shared.by_admin(context, update.message):
                text = "Sorry, only this group's admins can change its voice replies."
            else:
                if choice:
                    await asyncio.to_thread(voice.set_mode, conversation, choice)
                text = VOICE_MODE_TEXT[await asyncio.to_thread(voice.mode, conversation)]
            await self.shared.send_text(context, chat_id, text, plain=True)

    def _models_text(self, conversation: str) -> str:
        """What /model says: the chat's model, then the models Ollama has (blocking)."""
        current = self.shared.agent.model_of(conversation)
        lines = [f"This chat uses `{current}`."]
        try:
            models = self.shared.agent.models()
        except LLMError as exc:
            return f"{lines[0]} {exc}"
        lines += ["", f"Models on {self.shared.agent.server}:"]
        lines += [f"- `{model.name}`{' (in use)' if model.name == current else ''}: {model.describe()}"
                  for model in models]
        lines += ["", "/model NAME switches this chat to another one."]
        return "\n".join(lines)

    async def unknown(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Any other command: point to /help (in a group, a bare one may be another bot's)."""
        if command_target(update.message) == "" and update.effective_chat.type != ChatType.PRIVATE:
            return  # a bare /command in a group may be another bot's
        async with self.shared.in_order(update.effective_chat.id):
            await self.shared.send_text(context, update.effective_chat.id,
                                        "I don't know that command; /help lists what I understand.", plain=True)

    # -- messages -------------------------------------------------------------------------------
