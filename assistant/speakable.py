"""What of a reply is said aloud: its words without Markdown, links or code, in its language,
within a bounded length. Each rule is a named function (tested on its own)."""

from __future__ import annotations

import re
import unicodedata

#: A fenced or indented code block is not read out; a short inline code span (a name, a
#: number) is, a longer one is not.
MAX_SPOKEN_CODE_CHARS = 40
#: How a spoken reply that was cut ends, by language (the rest is only in the text).
REST_IN_TEXT = {"en": "The rest is in the text.", "ru": "Остальное — в тексте."}
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)")
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")


def speakable(markdown: str) -> str:
    """The words of a Markdown reply as they are read out: paragraphs, headings, list items and
    table cells as sentences; emphasis kept as plain words; a link's text without its address;
    code blocks, long inline code, bare addresses and pictographs (emoji) left out."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)
    sentences = []
    for token in tokens:
        if token.type == "inline":
            text = spoken_inline(token.children or [])
            if text:
                sentences.append(text)
    return " ".join(_as_sentence(text) for text in sentences)


def spoken_inline(children: list) -> str:
    """The spoken words of one inline run of Markdown tokens."""
    words: list[str] = []
    link_depth = 0
    link_words: list[str] = []
    for child in children:
        if child.type == "link_open":
            link_depth += 1
            link_words = []
        elif child.type == "link_close":
            link_depth -= 1
            text = " ".join(link_words).strip()
            if text and not _URL.fullmatch(text):
                words.append(text)
        elif child.type in ("text", "code_inline", "image"):
            text = child.content
            if child.type == "code_inline" and len(text) > MAX_SPOKEN_CODE_CHARS:
                continue
            (link_words if link_depth else words).append(text)
        elif child.type in ("softbreak", "hardbreak"):
            (link_words if link_depth else words).append(" ")
    return without_pictographs(_URL.sub("", "".join(words))).strip()


def without_pictographs(text: str) -> str:
    """Text without emoji and other pictographs (a voice would spell out their names)."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in ("So", "Sk", "Cs", "Co")
                   and ch not in "\u200d\ufe0f")
    return re.sub(r"[ \t]{2,}", " ", kept)


def reply_language(text: str) -> str | None:
    """The language a reply is read in, by its letters: ``ru`` for mostly Cyrillic, ``en`` for
    mostly Latin, None when it has neither (numbers, symbols): then the default voice reads it."""
    cyrillic, latin = len(_CYRILLIC.findall(text)), len(_LATIN.findall(text))
    if not cyrillic and not latin:
        return None
    return "ru" if cyrillic > latin else "en"


def bounded(text: str, max_chars: int, language: str | None) -> tuple[str, bool]:
    """``text`` within ``max_chars``: cut after the last whole sentence that fits (else the last
    whole word), ending with a sentence that says the rest is in the text. True when cut."""
    if len(text) <= max_chars:
        return text, False
    head = text[:max_chars]
    ends = [match.end() for match in _SENTENCE_END.finditer(head)]
    cut = ends[-1] if ends else (head.rfind(" ") if " " in head else max_chars)
    tail = REST_IN_TEXT.get(language or "en", REST_IN_TEXT["en"])
    return f"{_as_sentence(text[:cut].strip())} {tail}", True


def _as_sentence(text: str) -> str:
    """A block read as a sentence of its own: ends with a full stop unless it has one."""
    text = text.strip()
    return text if not text or text[-1] in ".!?…:;" else text + "."
