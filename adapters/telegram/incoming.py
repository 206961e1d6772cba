"""Incoming messages: what is addressed to the bot (groups), the text without the bot's
mention, the file a message carries, replies and forwards, and albums."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from telegram import Bot, Message, MessageEntity
from telegram.constants import ChatType

#: Documents are downloaded only when their MIME type says they may be media or text.
_DOCUMENT_PREFIXES = ("image/", "audio/", "video/", "text/")
_UNKNOWN_MIMES = ("", "application/octet-stream")


@dataclass(frozen=True)
class IncomingFile:
    """A file in a Telegram message, before it is downloaded."""

    file_id: str
    size: int | None
    name: str
    refusal: str | None = None  # why it is not taken (a document of an unsupported type)
    voice: bool = False  # a voice note: its words are the sender's message
    forwarded_from: str | None = None  # whose message it is, when forwarded


#: What every Telegram conversation id starts with (then the chat id).
CONVERSATION_PREFIX = "telegram:"


def conversation_id(chat_id: int) -> str:
    """The agent's conversation id of a Telegram chat (a group is one conversation)."""
    return f"{CONVERSATION_PREFIX}{chat_id}"


def addressed(message: Message, bot: Bot) -> bool:
    """Whether ``message`` is for the bot: everything in a private chat; in a group, a command
    (``/help``, ``/help@thisbot``, not ``/help@otherbot``), a reply to one of the bot's
    messages, or a message whose text or caption mentions ``@thisbot``."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    target = command_target(message)
    if target is not None:
        return target in ("", bot.username.lower())
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
        return True
    return bool(_mentions(message, bot.username))


def command_target(message: Message) -> str | None:
    """The bot a command names, lower-case (``""`` for a bare ``/help``); None: no command."""
    entities = message.entities
    if not message.text or not entities or entities[0].type != MessageEntity.BOT_COMMAND \
            or entities[0].offset != 0:
        return None
    return message.parse_entity(entities[0]).partition("@")[2].lower()


def _mentions(message: Message, username: str) -> list[MessageEntity]:
    """The entities of ``message``'s text or caption that mention ``@username``."""
    parsed = (message.parse_entities([MessageEntity.MENTION]) if message.text
              else message.parse_caption_entities([MessageEntity.MENTION]))
    return sorted((entity for entity, text in parsed.items() if text[1:].lower() == username.lower()),
                  key=lambda entity: entity.offset)


def message_text(message: Message, username: str) -> str:
    """The text or caption of ``message`` without its mentions of ``@username`` (the agent
    needs no "@bot," before the question)."""
    text = message.text or message.caption or ""
    mentions = _mentions(message, username)
    if not mentions:
        return text.strip()
    units = text.encode("utf-16-le")  # entity offsets count UTF-16 code units
    bounds = [0, *(b for e in mentions for b in (e.offset, e.offset + e.length)), len(units) // 2]
    pieces = [units[start * 2:end * 2].decode("utf-16-le") for start, end in zip(bounds[::2], bounds[1::2])]
    return reduce(_join, pieces).strip()


def _join(left: str, right: str) -> str:
    """Two pieces of a text a mention was cut from, spaced as if it had never been there."""
    left, right = left.rstrip(" "), right.lstrip(" ")
    if not left:  # "@bot, what is this?"
        return right.lstrip(",:; ")
    if not right or right[0] in ",.:;!?\n":
        return left + right
    return f"{left} {right}"


def replied_to(messages: list[Message], bot_id: int) -> Message | None:
    """The message that ``messages`` reply to, unless it is the bot's (the conversation has it)."""
    for message in messages:
        replied = message.reply_to_message
        if replied is not None and not (replied.from_user is not None and replied.from_user.id == bot_id):
            return replied
    return None


def quoted(replied: Message, own: bool) -> str | None:
    """What a replied-to message (``own``: the asker's) says, for the agent: in a group, the
    person asking may be talking about a message the bot never saw."""
    words = (replied.text or replied.caption or "").strip()
    if not words:
        return None
    if own:
        return f"(In reply to my earlier message: \u201c{words}\u201d)"
    return f"(In reply to a message from {sender_name(replied)}: \u201c{words}\u201d)"


def same_sender(first: Message, second: Message) -> bool:
    """Whether the same person wrote both messages."""
    return first.from_user is not None and second.from_user is not None \
        and first.from_user.id == second.from_user.id


def sender_name(message: Message) -> str:
    """Who wrote ``message``, as the agent is told (the original author of a forwarded one)."""
    return forwarded_from(message) or (message.from_user.full_name if message.from_user else None) \
        or (message.sender_chat.title if message.sender_chat else None) or "someone"


def incoming_file(message: Message) -> IncomingFile | None:
    """The file a message carries (the largest photo size), or None for text and unknown kinds."""
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return IncomingFile(largest.file_id, largest.file_size, f"photo_{message.message_id}.jpg")
    named = ((message.audio, "audio"), (message.voice, "voice.oga"), (message.video, "video.mp4"),
             (message.video_note, "video_note.mp4"), (message.animation, "animation.mp4"))
    for media, default in named:
        if media is not None:
            return IncomingFile(media.file_id, media.file_size,
                                safe_name(getattr(media, "file_name", None) or default),
                                voice=media is message.voice, forwarded_from=forwarded_from(message))
    document = message.document
    if document is None:
        return None
    mime = (document.mime_type or "").lower()
    name = safe_name(document.file_name or "document")
    refusal = None
    if not (mime.startswith(_DOCUMENT_PREFIXES) or mime in _UNKNOWN_MIMES):
        refusal = f"I can't read {name} ({mime}); send photos, audio, video or text files."
    return IncomingFile(document.file_id, document.file_size, name, refusal)


def forwarded_from(message: Message) -> str | None:
    """Who wrote a forwarded message (a name, or "someone" when hidden); None if not forwarded."""
    origin = message.forward_origin
    if origin is None:
        return None
    user = getattr(origin, "sender_user", None)
    chat = getattr(origin, "sender_chat", None) or getattr(origin, "chat", None)
    name = (user.full_name if user is not None else None) or getattr(origin, "sender_user_name", None) \
        or (chat.title if chat is not None else None)
    return name or "someone"


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name).name).strip(" .")
    return cleaned[-100:] or "file"


class Album:
    """The messages of one media group, collected until none has come for a moment."""

    def __init__(self, first: Message) -> None:
        self.messages = [first]
        self._last = time.monotonic()

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self._last = time.monotonic()

    async def complete(self, quiet: float) -> None:
        while (remaining := self._last + quiet - time.monotonic()) > 0:
            await asyncio.sleep(remaining)
        self.messages.sort(key=lambda m: m.message_id)
