"""The agent's Markdown as Telegram HTML (only tags Telegram knows, everything escaped), split
into messages below Telegram's limit at paragraph breaks."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from telegram import LinkPreviewOptions

from adapters.telegram.settings import MESSAGE_LIMIT
from assistant.session import split_text

#: Links in replies are shown without a preview.
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass(frozen=True)
class Chunk:
    """One message: Telegram HTML (None to send it as plain text) and its plain-text fallback."""

    html: str | None
    plain: str


def render_markdown(text: str, limit: int = MESSAGE_LIMIT) -> list[Chunk]:
    """The agent's Markdown as messages of Telegram HTML, each at most ``limit`` characters,
    split between paragraphs (blocks); a block too long on its own goes as plain text split at
    lines, then words. Everything is escaped; only tags Telegram knows are produced."""
    chunks: list[Chunk] = []
    html_parts: list[str] = []
    plain_parts: list[str] = []

    def flush() -> None:
        if html_parts:
            chunks.append(Chunk("\n\n".join(html_parts), "\n\n".join(plain_parts)))
            html_parts.clear()
            plain_parts.clear()

    for block_html, block_plain in _markdown_blocks(text):
        if not block_html.strip():
            continue
        if len(block_html) > limit:
            flush()
            chunks.extend(Chunk(None, part) for part in split_text(block_plain, limit))
            continue
        if len("\n\n".join([*html_parts, block_html])) > limit:
            flush()
        html_parts.append(block_html)
        plain_parts.append(block_plain)
    flush()
    return chunks


_SAFE_LINK = re.compile(r"^(https?://|tg://|mailto:)", re.IGNORECASE)


def _markdown_blocks(text: str) -> list[tuple[str, str]]:
    """Top-level Markdown blocks as (Telegram HTML, the block's Markdown source)."""
    from markdown_it import MarkdownIt

    source_lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    blocks: list[tuple[str, str]] = []
    start = 0
    for index, token in enumerate(tokens):
        if token.level != 0:
            continue
        if token.nesting == 1:
            start = index
            continue
        block = tokens[start:index + 1] if token.nesting == -1 else [token]
        first = block[0]
        lines = first.map or [0, len(source_lines)]
        blocks.append((_render_block(block).strip(), "\n".join(source_lines[lines[0]:lines[1]]).strip()))
    return blocks


def _render_block(tokens: list) -> str:
    out = ""
    lists: list[list] = []  # [ordered?, next number]
    cells = 0
    for token in tokens:
        kind = token.type
        if kind == "inline":
            out += _render_inline(token.children or [])
        elif kind == "heading_open":
            out += "<b>"
        elif kind == "heading_close":
            out += "</b>\n"
        elif kind == "paragraph_close" and not token.hidden and token.level > 0:
            out += "\n"
        elif kind in ("bullet_list_open", "ordered_list_open"):
            ordered = kind == "ordered_list_open"
            lists.append([ordered, int(token.attrGet("start") or 1) if ordered else 0])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "list_item_open":
            if out and not out.endswith("\n"):
                out += "\n"
            marker = "•"
            if lists and lists[-1][0]:
                marker = f"{lists[-1][1]}."
                lists[-1][1] += 1
            out += "   " * (len(lists) - 1) + marker + " "
        elif kind == "list_item_close":
            out = out.rstrip("\n") + "\n"
        elif kind == "blockquote_open":
            out += "<blockquote>"
        elif kind == "blockquote_close":
            out = out.rstrip("\n") + "</blockquote>\n"
        elif kind in ("fence", "code_block"):
            language = re.sub(r"[^\w+#-]", "", (token.info or "").split(" ")[0])
            code = html.escape(token.content.rstrip("\n"), quote=False)
            out += (f'<pre><code class="language-{language}">{code}</code></pre>' if language
                    else f"<pre>{code}</pre>")
        elif kind == "hr":
            out += "———"
        elif kind == "html_block":
            out += html.escape(token.content, quote=False)
        elif kind == "tr_open":
            cells = 0
        elif kind in ("th_open", "td_open"):
            out += " | " if cells else ""
            out += "<b>" if kind == "th_open" else ""
            cells += 1
        elif kind == "th_close":
            out += "</b>"
        elif kind == "tr_close":
            out += "\n"
    return out


def _render_inline(tokens: list) -> str:
    out = ""
    links: list[bool] = []
    tags = {"strong_open": "<b>", "strong_close": "</b>", "em_open": "<i>", "em_close": "</i>",
            "s_open": "<s>", "s_close": "</s>"}
    for token in tokens:
        kind = token.type
        if kind in tags:
            out += tags[kind]
        elif kind == "code_inline":
            out += f"<code>{html.escape(token.content, quote=False)}</code>"
        elif kind == "link_open":
            href = str(token.attrGet("href") or "")
            links.append(bool(_SAFE_LINK.match(href)))
            out += f'<a href="{html.escape(href, quote=True)}">' if links[-1] else ""
        elif kind == "link_close":
            out += "</a>" if links and links.pop() else ""
        elif kind in ("softbreak", "hardbreak"):
            out += "\n"
        else:  # text, html_inline, image (its alt text), anything new: shown as text
            out += html.escape(token.content, quote=False)
    return out

def reply_markdown(text: str, results: Sequence[str], heard: Sequence[str]) -> str:
    """A reply as one Markdown text: what was heard in a voice note first, as a quote, then the
    model's words, then the measured results as a short block under them."""
    text = text.strip()
    if heard:
        text = "\n".join(f"> {line}" for line in heard) + "\n\n" + text
    measured = [line for line in results if line not in heard]
    if measured:
        text += "\n\n" + "\n".join(f"`{line}`" for line in measured)
    return text.strip()
