"""Attachments: files an adapter registered for one conversation, known by id.

The language model only ever sees ids (``att_1``, ...) and kinds; tools turn an id
back into a file through :meth:`AttachmentStore.path_of`, which refuses ids that
this conversation did not register.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from tools.base import ToolError
from tools.media import check_file, sniff_kind


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
    """The attachments of one conversation."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._items: dict[str, Attachment] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.max_bytes = max_bytes

    def register(self, path: Path | str, name: str | None = None, kind: str | None = None, *,
                 voice: bool = False, forwarded_from: str | None = None) -> Attachment:
        """Check the file (exists, not empty, within the size limit), sniff its kind, give it an id.

        ``voice``: the channel says it is a voice note; if it holds audio, its kind is ``voice``
        (its words are the user's own, or ``forwarded_from``'s)."""
        try:
            path = Path(path).expanduser().resolve()
        except RuntimeError:  # ~user of a user that does not exist
            raise ToolError(f"{str(path)[:80]}: no such user folder.") from None
        size = check_file(path, self.max_bytes)
        kind = kind or sniff_kind(path)
        if voice and kind == "audio":
            kind = "voice"
        with self._lock:
            attachment = Attachment(f"att_{next(self._ids)}", kind, path, name or path.name, size,
                                    forwarded_from)
            self._items[attachment.id] = attachment
        return attachment

    def get(self, attachment_id: str) -> Attachment:
        attachment = self._items.get(str(attachment_id).strip())
        if attachment is None:
            known = ", ".join(self._items) or "none"
            raise ToolError(f"Unknown attachment id {attachment_id!r} (this conversation has: {known}).")
        return attachment

    def path_of(self, attachment_id: str, kinds: Collection[str]) -> Path:
        attachment = self.get(attachment_id)
        if kinds and attachment.kind not in kinds:
            wanted = " or ".join(f"{_article(kind)} {kind}" for kind in sorted(kinds))
            raise ToolError(f"{attachment.name} ({attachment.id}) is {_article(attachment.kind)} "
                            f"{attachment.kind} file; this tool needs {wanted}.")
        return attachment.path

    def __iter__(self):
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
