"""The model's words passed on as they stream, with nothing shown that the checks would refuse."""

from __future__ import annotations

from collections.abc import Callable

from assistant.turn import checks

#: Characters that may start a tool call or markup: the words from there on wait for the answer.
SUSPECT = "{`<["


class Streamer:
    """Passes the model's words on as they stream, holding back from the first character that
    may start a tool call or markup (:data:`SUSPECT`) until the answer is read, while the words
    so far may still fail a check (:func:`checks.may_still_fail`: they repeat the start of an
    earlier reply or of the user's message), and for good once they fail one that judges a
    start (:func:`checks.first_failure` with ``partial``); :meth:`finish` then shows the rest of
    the words the checks passed."""

    def __init__(self, on_token: Callable[[str], None] | None, context: checks.Context | None = None) -> None:
        self.on_token = on_token
        self.context = context or checks.Context()
        self.shown = ""  # what the person has seen of this answer
        self.holding = False
        self.watching = True  # the words so far may still fail a check
        self.pending = ""  # words held while they may

    def feed(self, token: str) -> None:
        if self.holding:
            return
        cut = min((i for i in (token.find(c) for c in SUSPECT) if i != -1), default=-1)
        if cut == -1:
            self.emit(token)
        else:
            self.emit(token[:cut])
            self.holding = True

    def emit(self, text: str) -> None:
        if self.watching:
            self.pending += text
            so_far = self.shown + self.pending
            if checks.first_failure(so_far, self.context, partial=True):  # not an answer: nothing more is shown
                self.holding, self.pending, self.watching = True, "", False
                return
            if checks.may_still_fail(so_far, self.context):
                return
            self.watching = False  # it says something new: no need to look any more
            text, self.pending = self.pending, ""
        if text and self.on_token is not None:
            self.on_token(text)
        self.shown += text

    def finish(self, words: str) -> None:
        """Show what is left of the checked ``words`` after what was already shown."""
        self.watching, self.pending = False, ""  # the words were judged: what is held back is in them
        if words.startswith(self.shown.strip()) and self.shown.strip():
            self.emit(words[len(self.shown.strip()):])
        elif not self.shown.strip():
            self.emit(words)
        # otherwise the shown start was not an answer after all: the channel re-renders Reply.text
