"""Attachments: files an adapter registered for one conversation, known by id.

The language model only ever sees ids (``att_1``, ...) and kinds; tools turn an id
back into a file through :meth:`AttachmentStore.path_of`, which refuses ids that
this conversation did not register, and says so when the file is gone.

A store backed by :class:`~assistant.memory.Memory` keeps the conversation's attachments in
the database: ids stay unique within the conversation across restarts, and every store of the
conversation (in any process) knows them. A store with a ``folder`` also keeps the files an
adapter received (downloads): they stay as long as their ids, within a size cap per
conversation (oldest deleted first), and the conversation's reset deletes them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tools.base import BadCall, ToolError
from tools.media import check_file, megabytes, printable, sniff_kind

if TYPE_CHECKING:
    from assistant.memory import Memory

log = logging.getLogger(__name__)

#: Unknown-id errors list at most this many of the conversation's ids (the newest).
LISTED_IDS = 12


@dataclass(frozen=True)
class Attachment:
    id: str
    kind: str  # image | audio | voice | video | text | document
    path: Path
    name: str
    size: int
    #: Whose words a forwarded message holds (a name, or "someone"); None: the user's own.
    forwarded_from: str | None = None

    def describe(self) -> str:
        what = self.kind if self.kind != "voice" else "voice note"
        if self.forwarded_from is not None:
            what = f"{what} forwarded from {self.forwarded_from}"
        return f"{self.id} ({what}, {self.name})"


class AttachmentStore:
    """The attachments of one conversation.

    ``memory``: where they are kept (without it, in this object only: `assistant analyze`,
    tests). ``folder``: where the files an adapter receives are kept (:meth:`new_path`), at most
    ``folder_bytes`` of them."""

    def __init__(self, max_bytes: int | None = None, *, memory: Memory | None = None,
                 conversation_id: str = "", folder: Path | None = None,
                 folder_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.memory = memory
        self.conversation_id = conversation_id
        self.folder = None if folder is None else Path(folder).resolve()
        self.folder_bytes = folder_bytes
        self._items: dict[str, Attachment] = {}  # without memory: all of them; with: those seen
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new_path(self, name: str) -> Path:
        """A fresh path in the conversation's folder for a file the adapter receives (a
        download); registered, the file is kept with its id."""
        if self.folder is None:
            raise ValueError("this attachment store has no folder for received files")
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"{uuid.uuid4().hex[:12]}_{Path(name).name or 'file'}"

    def register(self, path: Path | str, name: str | None = None, kind: str | None = None, *,
                 voice: bool = False, forwarded_from: str | None = None) -> Attachment:
        """Check the file (exists, not empty, within the size limit), sniff its kind, give it an id.

        ``voice``: the channel says it is a voice note; if it holds audio, its kind is ``voice``
        (its words are the user's own, or ``forwarded_from``'s).
        A received file (in the folder) that cannot be registered is deleted."""
        try:
            path = Path(path).expanduser().resolve()
        except RuntimeError:  # ~user of a user that does not exist
            raise ToolError(f"{str(path)[:80]}: no such user folder.") from None
        received = self._received(path)
        try:
            size = check_file(path, self.max_bytes)
            kind = kind or sniff_kind(path)
        except ToolError:
            if received:
                path.unlink(missing_ok=True)
            raise
        if voice and kind == "audio":
            kind = "voice"
        name = printable(name or path.name)  # as it is shown to people and to the model
        if self.memory is not None:
            attachment = self.memory.add_attachment(self.conversation_id, kind, path, name,
                                                    size, forwarded_from)
        else:
            with self._lock:
                attachment = Attachment(f"att_{next(self._ids)}", kind, path, name, size,
                                        forwarded_from)
        with self._lock:
            self._items[attachment.id] = attachment
        if received:
            self._trim(keep=path)
        return attachment

    def get(self, attachment_id: str) -> Attachment:
        attachment_id = str(attachment_id).strip()
        attachment = self._items.get(attachment_id)
        if attachment is None and self.memory is not None:
            attachment = self.memory.attachment(self.conversation_id, attachment_id)
            if attachment is not None:
                with self._lock:
                    self._items[attachment.id] = attachment
        if attachment is None:
            known = [item.id for item in self][-LISTED_IDS:]
            raise BadCall(f"Unknown attachment id {attachment_id!r} "
                            f"(this conversation has: {', '.join(known) or 'none'}).")
        return attachment

    def path_of(self, attachment_id: str, kinds: Collection[str]) -> Path:
        attachment = self.get(attachment_id)
        if kinds and attachment.kind not in kinds:
            wanted = " or ".join(f"{_article(kind)} {kind}" for kind in sorted(kinds))
            raise BadCall(f"{attachment.name} ({attachment.id}) is {_article(attachment.kind)} "
                            f"{attachment.kind} file; this tool needs {wanted}.")
        if not attachment.path.is_file():
            raise ToolError(f"{attachment.name} ({attachment.id}): that file is no longer available; "
                            "send it again.")
        return attachment.path

    def __iter__(self) -> Iterator[Attachment]:
        if self.memory is not None:
            return iter(self.memory.attachments(self.conversation_id))
        with self._lock:
            return iter(list(self._items.values()))

    def __len__(self) -> int:
        if self.memory is not None:
            return self.memory.count_attachments(self.conversation_id)
        with self._lock:
            return len(self._items)

    def _received(self, path: Path) -> bool:
        return self.folder is not None and path.is_relative_to(self.folder)

    def _trim(self, keep: Path) -> None:
        """Delete the folder's oldest files (any not registered first, then by id) until it
        holds at most ``folder_bytes``; ``keep``, the file just registered, stays."""
        if self.folder is None or self.folder_bytes is None:
            return
        files: dict[Path, os.stat_result] = {}
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):  # deleted meanwhile
                if path.is_file():
                    files[path] = path.stat()
        total = sum(stat.st_size for stat in files.values())
        registered = [item.path for item in self if item.path in files]
        strays = sorted(set(files) - set(registered), key=lambda path: files[path].st_mtime)
        for path in [*strays, *registered]:
            if total <= self.folder_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= files[path].st_size
            log.info("Deleted %s of conversation %s: its files passed %s (ASSISTANT_ATTACHMENTS_MB)",
                     path.name, self.conversation_id, megabytes(self.folder_bytes))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
