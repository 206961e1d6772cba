"""A local server that speaks enough of the Telegram Bot API for the bot's tests.

It serves queued updates through long-polled ``getUpdates``, answers the methods the bot
calls (``getMe``, ``sendMessage``, ``sendMessageDraft``, ``sendChatAction``,
``editMessageText``, ``deleteMessage``, ``getFile``, ``getChatMember``, ``sendPhoto``,
``sendVideo``, ``sendVoice``, ``sendDocument``, ``setMyCommands``, ``deleteWebhook``) and the file download
path (``/file/bot<token>/<file_path>``). Messages carry the entities a Telegram client would
give them (a command at the start, ``@username`` mentions), and a group's members are members
unless made admins. It checks text the way Telegram does (HTML: known tags,
balanced; 1–4,096 visible characters; drafts in private chats only, with a non-zero
``draft_id``; an edit must change the message), and records every request so tests can assert
what the bot sent. A failure (for example a 429 with ``retry_after``) can be injected for the
next calls of a method; the whole server can go down (every request cut off unanswered, as
when the network fails) and come back; the bot's token can be revoked (every request then
answers 401); a file can vanish (its download answers 404).

Standard library only: ``http.server`` in a thread, reached at ``url``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import html.parser
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.local_http import LocalHTTPServer, QuietHandler

TOKEN = "123456:TEST-token"
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Assistant", "username": "test_assistant_bot"}
TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                 "blockquote", "tg-spoiler", "span", "tg-emoji"}
MESSAGE_LIMIT = 4096


@dataclass
class Call:
    """One request the bot made."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    error: str | None = None  # the error answered instead of a result, if any
    result: Any = None  # what was answered (for sendMessage, the message)


class TelegramHTMLError(ValueError):
    pass


class _HTMLChecker(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in TELEGRAM_TAGS:
            raise TelegramHTMLError(f"Unsupported start tag \"{tag}\"")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise TelegramHTMLError(f"Unmatched end tag \"{tag}\"")
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def visible_text(text: str) -> str:
    """The text Telegram shows for an HTML message; :class:`TelegramHTMLError` where it would
    answer "can't parse entities"."""
    checker = _HTMLChecker()
    checker.feed(text)
    checker.close()
    if checker.stack:
        raise TelegramHTMLError(f"Can't find end tag corresponding to start tag \"{checker.stack[-1]}\"")
    if checker.rawdata:
        raise TelegramHTMLError("Unclosed markup")
    return "".join(checker.text)


class FakeBotAPI(LocalHTTPServer):
    """The fake server; use as a context manager (or ``start()`` / ``close()``)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.downloads: list[str] = []
        self._updates: list[dict] = []
        self._files: dict[str, tuple[Path, str]] = {}  # file_id -> (path, file_path)
        self._failures: dict[str, list[dict]] = {}
        self._chat_types: dict[int, str] = {}  # chat id -> "private", "group", "supergroup"
        self._users: dict[int, dict] = {}  # user id -> the user, as their messages showed them
        self._statuses: dict[tuple[int, int], str] = {}  # (chat id, user id) -> "administrator", ...
        #: The bot's messages as they show now: (chat id, message id) -> (text, parse_mode).
        self._shown: dict[tuple[int, int], tuple[str, str | None]] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._closing = False
        self._down = False
        self._revoked = False
        self._gone: set[str] = set()  # file paths whose download answers 404
        #: Requests cut off while the server was down (their paths, without the token).
        self.refused: list[str] = []
        super().__init__(_Handler)
        self._server.api = self  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.stop()

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding the bot ------------------------------------------------------------------------

    def add_file(self, path: Path, *, file_size: int | None = None) -> dict:
        """Make ``path`` downloadable; returns the ``file_id``/``file_unique_id``/``file_size`` fields."""
        number = next(self._ids)
        file_id = f"file{number}"
        self._files[file_id] = (Path(path), f"documents/{number}_{Path(path).name}")
        return {"file_id": file_id, "file_unique_id": f"unique{number}",
                "file_size": Path(path).stat().st_size if file_size is None else file_size}

    def message(self, chat_id: int, *, user: dict | None = None, text: str | None = None,
                caption: str | None = None, media_group_id: str | None = None,
                file_size: int | None = None, photo: Path | None = None, voice: Path | None = None,
                audio: Path | None = None, video: Path | None = None, document: Path | None = None,
                mime_type: str | None = None, chat_type: str = "private",
                forwarded_from: str | None = None, reply_to: dict | None = None) -> dict:
        """Queue an update with a message as a Telegram client would send it; returns the message.

        A private chat's id is its user's; in a group (``chat_type="group"`` or
        ``"supergroup"``, a negative ``chat_id``) pass the ``user`` who writes. ``reply_to``:
        the message this one replies to (one returned here, or a ``Call.result`` of the bot's)."""
        user = user or make_user(chat_id)
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        chat["first_name" if chat_type == "private" else "title"] = (
            user["first_name"] if chat_type == "private" else "Test group")
        self._chat_types[chat_id] = chat_type
        self._users[user["id"]] = user
        message: dict[str, Any] = {"message_id": next(self._ids), "date": int(time.time()),
                                   "chat": chat, "from": user}
        if text is not None:
            message["text"] = text
            if entities := _entities(text):
                message["entities"] = entities
        if caption is not None:
            message["caption"] = caption
            if entities := _entities(caption, commands=False):
                message["caption_entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if photo is not None:  # three sizes, as Telegram sends them: the last is the largest
            sizes = []
            for width, height in ((90, 60), (320, 213), (1280, 853)):
                info = self.add_file(photo, file_size=file_size)
                if (width, height) != (1280, 853) and file_size is None:
                    info["file_size"] = width * height // 10
                sizes.append({**info, "width": width, "height": height})
            message["photo"] = sizes
        if voice is not None:
            message["voice"] = {**self.add_file(voice, file_size=file_size), "duration": 3,
                                "mime_type": mime_type or "audio/ogg"}
        if audio is not None:
            message["audio"] = {**self.add_file(audio, file_size=file_size), "duration": 3,
                                "mime_type": mime_type or "audio/mpeg", "file_name": audio.name}
        if video is not None:
            message["video"] = {**self.add_file(video, file_size=file_size), "duration": 30,
                                "width": 640, "height": 360, "mime_type": mime_type or "video/mp4",
                                "file_name": video.name}
        if document is not None:
            message["document"] = {**self.add_file(document, file_size=file_size),
                                   "file_name": document.name,
                                   "mime_type": mime_type or "application/octet-stream"}
        if forwarded_from is not None:  # from a user who hides their account, as most do
            message["forward_origin"] = {"type": "hidden_user", "date": message["date"],
                                         "sender_user_name": forwarded_from}
        self.push({"message": message})
        return message

    def push(self, update: dict) -> None:
        with self._cond:
            update["update_id"] = next(self._ids)
            self._updates.append(update)
            self._cond.notify_all()

    def set_status(self, chat_id: int, user_id: int, status: str = "administrator") -> None:
        """What ``getChatMember`` says of ``user_id`` in ``chat_id`` (``"member"`` unless set)."""
        self._statuses[(chat_id, user_id)] = status

    def fail_next(self, method: str, error_code: int = 429, description: str | None = None,
                  retry_after: int | None = 1) -> None:
        """The next call of ``method`` fails (by default a flood-limit 429 with retry_after)."""
        error: dict[str, Any] = {"ok": False, "error_code": error_code,
                                 "description": description or f"Too Many Requests: retry after {retry_after}"}
        if retry_after is not None and error_code == 429:
            error["parameters"] = {"retry_after": retry_after}
        self._failures.setdefault(method, []).append(error)

    def go_down(self) -> None:
        """From now on every request is cut off unanswered (a long poll in progress too)."""
        with self._cond:
            self._down = True
            self._cond.notify_all()

    def come_back(self) -> None:
        """Answer requests again."""
        with self._cond:
            self._down = False

    def revoke_token(self) -> None:
        """The bot's token stops working: every request answers 401 Unauthorized."""
        with self._cond:
            self._revoked = True
            self._cond.notify_all()

    def lose_file(self, file_id: str) -> None:
        """``getFile`` still knows ``file_id``, but downloading it answers 404 Not Found."""
        self._gone.add(self._files[file_id][1])

    # -- what the bot did -----------------------------------------------------------------------

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        """Successful calls of ``method`` (to ``chat_id`` if given), in order."""
        with self._cond:
            return [c for c in self.calls if c.method == method and c.error is None
                    and (chat_id is None or c.params.get("chat_id") == chat_id)]

    def texts(self, chat_id: int) -> list[str]:
        """The texts of the messages delivered to ``chat_id``, in order (as first sent)."""
        return [c.params["text"] for c in self.sent("sendMessage", chat_id)]

    def shown(self, chat_id: int, message_id: int) -> str:
        """The text a bot message shows now (after its edits)."""
        with self._cond:
            return self._shown[(chat_id, message_id)][0]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait (without blocking the event loop) until ``condition()`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                methods = [c.method for c in self.calls]
                raise AssertionError(f"timed out waiting; the bot called: {methods}")
            await asyncio.sleep(0.02)

    # -- serving --------------------------------------------------------------------------------

    def _record(self, call: Call) -> dict:
        with self._cond:
            failures = self._failures.get(call.method)
            if failures:
                answer = failures.pop(0)
                call.error = answer["description"]
                self.calls.append(call)
                return answer
            try:
                call.result = self._result(call)
            except ApiError as exc:
                call.error = exc.description
                self.calls.append(call)
                return {"ok": False, "error_code": exc.code, "description": exc.description}
            self.calls.append(call)
            return {"ok": True, "result": call.result}

    def _get_updates(self, params: dict) -> dict:
        with self._cond:
            failures = self._failures.get("getUpdates")
            if failures:
                answer = failures.pop(0)
                self.calls.append(Call("getUpdates", params, error=answer["description"]))
                return answer
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        with self._cond:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and not self._closing and not self._down and not self._revoked \
                    and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            updates = list(self._updates[: int(params.get("limit") or 100)])
            self.calls.append(Call("getUpdates", params))
        return {"ok": True, "result": updates}

    def _result(self, call: Call) -> Any:
        p = call.params
        method = call.method
        if method == "getMe":
            return BOT_USER
        if method in ("deleteWebhook", "setMyCommands", "sendChatAction", "deleteMessage"):
            return True
        if method == "sendMessage":
            message = self._bot_message(p["chat_id"], text=_checked_text(p, "text"))
            self._shown[(p["chat_id"], message["message_id"])] = (p["text"], p.get("parse_mode"))
            return message
        if method == "sendMessageDraft":
            if self._chat_types.get(p["chat_id"], "private") != "private":
                raise ApiError(400, "Bad Request: message drafts can be sent to private chats only")
            if not isinstance(p.get("draft_id"), int) or p["draft_id"] == 0:
                raise ApiError(400, "Bad Request: draft_id must be non-zero")
            _checked_text(p, "text")
            return True
        if method == "editMessageText":
            key = (p["chat_id"], int(p["message_id"]))
            text = _checked_text(p, "text")
            if key not in self._shown:
                raise ApiError(400, "Bad Request: message to edit not found")
            if self._shown[key] == (text, p.get("parse_mode")):
                raise ApiError(400, "Bad Request: message is not modified: specified new message "
                                    "content and reply markup are exactly the same as a current "
                                    "content and reply markup of the message")
            self._shown[key] = (text, p.get("parse_mode"))
            return self._bot_message(p["chat_id"], text=text, message_id=key[1])
        if method == "getFile":
            if p["file_id"] not in self._files:
                raise ApiError(400, "Bad Request: invalid file_id")
            path, file_path = self._files[p["file_id"]]
            return {"file_id": p["file_id"], "file_unique_id": f"u_{p['file_id']}",
                    "file_size": path.stat().st_size, "file_path": file_path}
        if method == "getChatMember":
            user_id = int(p["user_id"])
            status = self._statuses.get((p["chat_id"], user_id), "member")
            member: dict[str, Any] = {"user": self._users.get(user_id) or make_user(user_id), "status": status}
            if status == "creator":
                member["is_anonymous"] = False
            if status == "administrator":
                member.update(dict.fromkeys(_ADMIN_RIGHTS, True), can_be_edited=False, is_anonymous=False)
            return member
        if method in ("sendPhoto", "sendVideo", "sendVoice", "sendDocument"):
            field_name = method[4:].lower()
            if field_name not in call.files:
                raise ApiError(400, f"Bad Request: there is no {field_name} in the request")
            extra = {"photo": {"photo": [{"file_id": "sent", "file_unique_id": "sent", "width": 1, "height": 1}]},
                     "video": {"video": {"file_id": "sent", "file_unique_id": "sent", "width": 1,
                                         "height": 1, "duration": 1}},
                     "voice": {"voice": {"file_id": "sent", "file_unique_id": "sent", "duration": 1}},
                     "document": {"document": {"file_id": "sent", "file_unique_id": "sent"}}}[field_name]
            return self._bot_message(p["chat_id"], **extra)
        raise ApiError(404, f"Not Found: method {method} is not served by the fake Bot API")

    def _bot_message(self, chat_id: int, message_id: int | None = None, **content: Any) -> dict:
        chat_type = self._chat_types.get(chat_id, "private")
        return {"message_id": message_id or next(self._ids), "date": int(time.time()),
                "chat": {"id": chat_id, "type": chat_type}, "from": BOT_USER, **content}

    def _file_for(self, file_path: str) -> Path | None:
        for path, known in self._files.values():
            if known == file_path:
                return path
        return None


class ApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code, self.description = code, description


def make_user(user_id: int, username: str | None = None, first_name: str = "Ann") -> dict:
    user = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        user["username"] = username
    return user


_ADMIN_RIGHTS = ("can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
                 "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories",
                 "can_edit_stories", "can_delete_stories")
#: A username as Telegram recognises a mention of it (5 to 32 letters, digits, underscores).
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}(?![\w])")


def _entities(text: str, *, commands: bool = True) -> list[dict]:
    """The entities Telegram gives a text: a command at its start (``/help@bot`` is one) and
    every ``@username`` mention (not the ``@bot`` of ``/help@bot``), at offsets in UTF-16 code units."""
    entities = []
    if commands and text.startswith("/"):
        entities.append({"type": "bot_command", "offset": 0, "length": _utf16(text.split()[0])})
    for match in _MENTION.finditer(text):
        entities.append({"type": "mention", "offset": _utf16(text[:match.start()]),
                         "length": _utf16(match.group())})
    return entities


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _checked_text(params: dict, name: str) -> str:
    text = params.get(name, "")
    shown = text
    if params.get("parse_mode") == "HTML":
        try:
            shown = visible_text(text)
        except TelegramHTMLError as exc:
            raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
    if not shown.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if len(shown) > MESSAGE_LIMIT:
        raise ApiError(400, "Bad Request: message is too long")
    return text


def _parse_params(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """Form or multipart fields; values that are JSON objects/lists/numbers are decoded."""
    params: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if content_type.startswith("multipart/form-data"):
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        for part in parsed.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True) or b""
            if filename is not None:
                files[name] = (filename, payload)
            else:
                params[name] = payload.decode()
    elif body:
        if content_type.startswith("application/json"):
            params = json.loads(body)
        else:
            params = {key: values[-1] for key, values in parse_qs(body.decode(), keep_blank_values=True).items()}
    for key, value in list(params.items()):
        if isinstance(value, str) and key != "text" and key != "caption":
            try:
                params[key] = json.loads(value)
            except ValueError:
                pass
    for key in ("chat_id", "message_id", "draft_id"):
        if isinstance(params.get(key), str) and params[key].lstrip("-").isdigit():
            params[key] = int(params[key])
    return params, files


class _Handler(QuietHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        api: FakeBotAPI = self.server.api  # type: ignore[attr-defined]
        path = unquote(urlsplit(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self._unavailable(api, path):
            return
        file_prefix = f"/file/bot{api.token}/"
        if path.startswith(file_prefix):
            local = api._file_for(path[len(file_prefix):])
            if local is None or path[len(file_prefix):] in api._gone:
                return self.send_bytes(404, b"Not Found", "text/plain")
            with api._cond:
                api.downloads.append(path[len(file_prefix):])
            return self.send_bytes(200, local.read_bytes(), "application/octet-stream")
        prefix = f"/bot{api.token}/"
        if not path.startswith(prefix):
            return self.send_json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        method = path[len(prefix):]
        params, files = _parse_params(self.headers.get("Content-Type", ""), body)
        if method == "getUpdates":
            answer = api._get_updates(params)
            if self._unavailable(api, path):  # it went down (or the token was revoked) while waiting
                return
            return self.send_json(200 if answer["ok"] else answer["error_code"], answer)
        answer = api._record(Call(method, params, files))
        self.send_json(200 if answer["ok"] else answer["error_code"], answer)

    def _unavailable(self, api: FakeBotAPI, path: str) -> bool:
        """Answer as a server that is down (nothing) or whose token was revoked (401)."""
        if api._down:
            with api._cond:
                api.refused.append(path.replace(api.token, "<token>"))
            self.close_connection = True
            return True  # no answer at all: the client sees the connection closed
        if api._revoked:
            self.send_json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return True
        return False
