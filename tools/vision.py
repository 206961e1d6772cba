"""Vision: a vision-language model served by Ollama looks at a photo or a video and answers.

Which model: ``ASSISTANT_VISION_MODEL`` (an Ollama model name) when set; otherwise the language
model in use when Ollama reports the ``vision`` capability for it (``/api/show``); otherwise the
tool is unavailable, and says how to enable it. A model Ollama does not report ``vision`` for is
never sent an image.

What it sends (Ollama's ``/api/chat``, the JPEGs base64 in the message's ``images``): the photo,
downscaled so its long side fits the model's input (never more than :data:`MAX_SIDE_LIMIT`),
or a video's keyframes spread evenly over it (as many in one request as the model takes, else a
few requests), with a short instruction and the person's question — only that: no other tool's
labels, which may be wrong and must not leak into what the model says it sees. The answer is
bounded (``num_predict``). The photo never leaves the machine that runs Ollama.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from tools.base import (AnalyzeOption, BadCall, Label, ModelCheck, ModelServer, Tool, ToolConfig,
                        ToolContext, ToolError, ToolResult, short_reason)
from tools.settings import Setting

#: The longest side of an image sent, whatever the settings and the model say.
MAX_SIDE_LIMIT = 2048
#: What is asked when the person asked nothing.
DEFAULT_QUESTION = "Describe what you see, and any text you can read."
#: What is asked of a video's keyframes (before the person's question, if any).
VIDEO_REQUEST = "Say what happens in the video, and any text you can read."
#: The model suggested where none is set up (small, reads text well, several images a request).
SUGGESTED_MODEL = "qwen2.5vl:3b"
#: Longest question passed on, in characters.
MAX_QUESTION_CHARS = 1000
#: Seconds a status question to Ollama (``/api/show``) may take, and how long its answer is
#: kept: a model's capabilities for long, a failure (Ollama down) briefly.
SHOW_TIMEOUT = 5.0
KEEP_KNOWN_S = 600.0
KEEP_FAILED_S = 30.0
#: Architectures (Ollama's ``general.architecture``) that read one image a request:
#: llama3.2-vision refuses more.
ONE_IMAGE_ARCHITECTURES = frozenset({"mllama"})

INSTRUCTION = ("Look at the {what} and answer the request below. Say only what you can see; "
               "quote any text exactly as written, and say so when something is unclear or "
               "unreadable. Answer in the language of the request, in a few sentences.")

VISION_MODEL = Setting("ASSISTANT_VISION_MODEL", None)
MAX_SIDE = Setting("ASSISTANT_VISION_MAX_SIDE", 1024, int, minimum=224, maximum=MAX_SIDE_LIMIT)
MAX_TOKENS = Setting("ASSISTANT_VISION_MAX_TOKENS", 300, int, minimum=16, maximum=4096)
FRAMES = Setting("ASSISTANT_VISION_FRAMES", 4, int, minimum=1, maximum=16)
TIMEOUT = Setting("ASSISTANT_VISION_TIMEOUT", 300.0, float, minimum=1.0)

#: Why the conversation's own model cannot be the vision model with ASSISTANT_LLM_API=openai.
NOT_ON_OLLAMA = ("the language model runs on an OpenAI-compatible server and ASSISTANT_VISION_MODEL "
                 "is not set")
ENABLE = (f"`ollama pull {SUGGESTED_MODEL}` and set ASSISTANT_VISION_MODEL={SUGGESTED_MODEL} "
          "(or use a language model that has vision)")


class VisionResult(ToolResult):
    """What the vision model said about a photo, or about a video's keyframes."""

    tool: str = "vision"
    labels: list[Label] = []
    model: str
    question: str
    answer: str
    #: The long side of the images sent, in pixels.
    side: int
    #: For a video: the times (seconds) of the keyframes it saw.
    frames: list[float] = []

    def to_json(self) -> dict[str, Any]:
        """Without the (always empty) labels: the answer is what it found."""
        return self.model_dump(mode="json", exclude={"labels"})

    def result_line(self) -> str:
        return f"{self.tool} · {first_sentences(self.answer)}"

    def summary(self) -> str:
        seen = f"{len(self.frames)} frames of the video" if self.frames else "the photo"
        return f"{self.model} on {seen}: {self.answer}"


class VisionParams(BaseModel):
    attachment_id: str
    # What to ask: for `assistant analyze --question`. Left out of what the language model reads
    # (every request carries the schemas): in a conversation the question is the person's own
    # words (ToolContext.question), never the model's paraphrase of them.
    question: SkipJsonSchema[str | None] = Field(None, max_length=MAX_QUESTION_CHARS)


@dataclass(frozen=True)
class _Model:
    """A model as Ollama describes it: whether it sees images (None: Ollama does not say),
    its architecture and its image input side (0: not reported)."""

    name: str
    vision: bool | None
    architecture: str
    image_size: int


class VisionTool(Tool[VisionParams]):
    name = "vision"
    description = "A vision model answers the user's question about a photo or video, or describes it."
    Params = VisionParams
    kinds: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    routes: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    slow = True
    on_model_server = True
    settings = (VISION_MODEL, MAX_SIDE, MAX_TOKENS, FRAMES, TIMEOUT)
    analyze_options = (AnalyzeOption("--question", "question", str, "TEXT",
                                     "what to ask the vision model (default: describe it and "
                                     "read any text)"),)

    def __init__(self, server: ModelServer | None, model: str | None = None, *, max_side: int = 1024,
                 max_tokens: int = 300, frames: int = 4, timeout: float = 300.0) -> None:
        super().__init__()
        self._server, self._explicit = server, model
        self._max_side, self._max_tokens, self._frames, self._timeout = (
            min(max_side, MAX_SIDE_LIMIT), max_tokens, frames, timeout)
        self._known: dict[str, tuple[float, _Model | ToolError]] = {}
        self._known_lock = threading.Lock()

    @classmethod
    def create(cls, config: ToolConfig) -> VisionTool:
        values = config.values
        return cls(config.model_server, values[VISION_MODEL.variable], max_side=values[MAX_SIDE.variable],
                   max_tokens=values[MAX_TOKENS.variable], frames=values[FRAMES.variable],
                   timeout=values[TIMEOUT.variable])

    def source(self) -> str:
        if self._explicit:
            return f"{self._explicit} on Ollama (ASSISTANT_VISION_MODEL)"
        return "the language model, when Ollama reports vision for it (ASSISTANT_VISION_MODEL unset)"

    # -- which model -----------------------------------------------------------------------

    def unavailable(self, llm_model: str | None) -> str | None:
        if self._server is None or llm_model is None:
            return "vision needs Ollama, which the no-LLM mode does not call."
        if self._explicit:
            return None  # its problems (not pulled, no vision) are said when it runs
        if not self._server.serves_chat:
            return f"No vision model: {NOT_ON_OLLAMA}; {ENABLE}."
        model = self._describe(llm_model)
        if isinstance(model, ToolError):
            return (f"No vision model: Ollama could not say whether {llm_model} sees images "
                    f"({str(model).rstrip('.')}); {ENABLE}.")
        if not model.vision:
            return (f"No vision model: {llm_model} cannot see images and ASSISTANT_VISION_MODEL "
                    f"is not set; {ENABLE}.")
        return None

    def check(self, llm_model: str | None) -> ModelCheck:
        """`doctor`: which vision model, whether Ollama has it and reports vision for it. The tool
        is optional: without a vision model it is off ("skip", with how to enable it), not broken."""
        name = self._explicit or llm_model
        if self._server is None or name is None:
            return ModelCheck("skip", "off: no model server to ask", ENABLE)
        if not self._explicit and not self._server.serves_chat:
            return ModelCheck("skip", f"off: {NOT_ON_OLLAMA}", ENABLE)
        model = self._describe(name, fresh=True)
        if isinstance(model, ToolError):
            if self._explicit:
                return ModelCheck("fail", f"{name} (ASSISTANT_VISION_MODEL): {model}",
                                  f"`ollama pull {name}`, or unset ASSISTANT_VISION_MODEL")
            return ModelCheck("skip", f"off: Ollama could not say whether {name} sees images", ENABLE)
        if self._explicit and model.vision is False:
            return ModelCheck("fail", f"{name} (ASSISTANT_VISION_MODEL) cannot see images", ENABLE)
        if not model.vision and not self._explicit:
            return ModelCheck("skip", f"off: {name} cannot see images and ASSISTANT_VISION_MODEL "
                                      "is not set", ENABLE)
        where = "ASSISTANT_VISION_MODEL" if self._explicit else "the language model"
        seen = "sees images" if model.vision else "Ollama does not report whether it sees images"
        return ModelCheck("ok", f"{name} ({where}): {seen}")

    def _describe(self, name: str, fresh: bool = False) -> _Model | ToolError:
        """What Ollama says of ``name`` (kept a while), or the error that says why it cannot."""
        now = time.monotonic()
        with self._known_lock:
            known = self._known.get(name)
            if known is not None and known[0] > now and not fresh:
                return known[1]
        try:
            found: _Model | ToolError = self._show(name)
            keep = KEEP_KNOWN_S
        except ToolError as exc:
            found, keep = exc, KEEP_FAILED_S
        with self._known_lock:
            self._known[name] = (now + keep, found)
        return found

    def _show(self, name: str) -> _Model:
        import ollama

        assert self._server is not None
        try:
            shown = ollama.Client(host=self._server.url, timeout=SHOW_TIMEOUT).show(name)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence
            raise self._explain(exc, name) from None
        info = dict(shown.modelinfo or {})
        architecture = str(info.get("general.architecture") or "")
        sizes = [value for key, value in info.items()
                 if key.endswith("vision.image_size") and isinstance(value, int)]
        capabilities = shown.capabilities
        return _Model(name, None if capabilities is None else "vision" in capabilities,
                      architecture, max(sizes, default=0))

    def _vision_model(self, llm_model: str | None) -> _Model:
        """The vision model to ask now; :class:`ToolError` saying why there is none."""
        why = self.unavailable(llm_model)
        if why is not None:
            raise BadCall(why)  # never routed so: a language model's call, told why
        name = self._explicit or llm_model
        assert name is not None
        model = self._describe(name)
        if isinstance(model, ToolError):
            self._forget(name)  # asked again next time: it may have been pulled or started
            raise ToolError(str(model))  # a new one: the kept one carries no traceback
        if model.vision is False:
            raise ToolError(f"{name} cannot see images (Ollama does not report vision for it); set "
                            f"ASSISTANT_VISION_MODEL to a vision model, e.g. `ollama pull {SUGGESTED_MODEL}`.")
        return model

    def _forget(self, name: str) -> None:
        with self._known_lock:
            self._known.pop(name, None)

    # -- running -----------------------------------------------------------------------------

    def _load(self) -> Any:
        import ollama

        if self._server is None:
            raise ToolError("vision needs Ollama, which is not configured (OLLAMA_HOST).")
        return ollama.Client(host=self._server.url, timeout=self._timeout)

    def run(self, params: VisionParams, ctx: ToolContext) -> VisionResult:
        model = self._vision_model(ctx.llm_model)
        question = " ".join((params.question or ctx.question or "").split())[:MAX_QUESTION_CHARS]
        question = question or DEFAULT_QUESTION
        side = self.side_for(model)
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        from tools.media import sniff_kind

        if sniff_kind(path) == "video":
            return self._video(model, path, question, side, ctx)
        ctx.report(0.0, f"{model.name}: preparing the photo")
        image = photo_jpeg(path, side)
        answer = self._ask(model.name, [image], _prompt("photo", question), ctx, 0.0, 1.0)
        return VisionResult(tool=self.name, model=model.name, question=question, answer=answer, side=side)

    def side_for(self, model: _Model) -> int:
        """The long side of the images sent to ``model``: the setting, or less where the model
        reads less (a tiling model up to about twice its input side)."""
        return min(self._max_side, 2 * model.image_size) if model.image_size else self._max_side

    def _video(self, model: _Model, path: Path, question: str, side: int, ctx: ToolContext) -> VisionResult:
        from tools.media import video_keyframes

        ctx.report(0.0, f"{model.name}: taking {self._frames} keyframes")
        duration, frames = video_keyframes(path, self._frames)
        images = [(at, jpeg(image, side)) for at, image in frames]
        per_request = 1 if model.architecture in ONE_IMAGE_ARCHITECTURES else len(images)
        groups = [images[i:i + per_request] for i in range(0, len(images), per_request)]
        asked = VIDEO_REQUEST + ("" if question == DEFAULT_QUESTION else f" Then: {question}")
        answers = []
        for number, group in enumerate(groups):
            times = ", ".join(f"{at:.1f} s" for at, _ in group)
            what = (f"{len(group)} frames of one {duration:.0f} s video, in order (at {times})"
                    if len(group) > 1 else f"frame of a {duration:.0f} s video at {times}")
            text = self._ask(model.name, [data for _, data in group], _prompt(what, asked), ctx,
                             number / len(groups), (number + 1) / len(groups))
            answers.append(text if len(groups) == 1 else f"At {group[0][0]:.0f} s: {text}")
        return VisionResult(tool=self.name, model=model.name, question=question, answer="\n".join(answers),
                            side=side, frames=[round(at, 2) for at, _ in images])

    def _ask(self, model: str, images: Sequence[bytes], prompt: str, ctx: ToolContext,
             start: float, end: float) -> str:
        """One request: the prompt and ``images`` (JPEG) to ``model``, its answer streamed (for
        progress) and bounded; :class:`ToolError` with one sentence when it fails."""
        assert self._server is not None
        ctx.report(start, f"{model}: looking")
        message = {"role": "user", "content": prompt,
                   "images": [base64.b64encode(data).decode("ascii") for data in images]}
        parts: list[str] = []
        cut = False
        try:
            for chunk in self._model.chat(
                    model=model, messages=[message], stream=True, keep_alive=self._server.keep_alive,
                    options={"num_predict": self._max_tokens, "num_ctx": self._server.num_ctx}):
                parts.append(chunk.message.content or "")
                # Cancelled once the turn is: leaving the stream closes it, and Ollama stops.
                ctx.report(start + (end - start) * min(0.95, len(parts) / self._max_tokens),
                           f"{model}: answering")
                cut = cut or chunk.done_reason == "length"
        except ToolError:  # Cancelled
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one sentence
            raise self._explain(exc, model) from None
        answer = "".join(parts).strip()
        if not answer:
            raise ToolError(f"The vision model {model} gave no answer.")
        return whole_sentences(answer) if cut else answer

    def _explain(self, exc: BaseException, model: str) -> ToolError:
        """A client failure as one sentence that says what to do."""
        import httpx
        import ollama

        host = self._server.url if self._server else "OLLAMA_HOST"
        if isinstance(exc, (ConnectionError, httpx.ConnectError)):
            return ToolError(f"Ollama is not reachable at {host}, so no vision model could look at "
                             "it – start it with `ollama serve`.")
        if isinstance(exc, httpx.TimeoutException):
            return ToolError(f"The vision model {model} did not answer within {self._timeout:g} s "
                             "(ASSISTANT_VISION_TIMEOUT) – it may still be loading, or the machine is busy.")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return ToolError(f"Ollama stopped answering while the vision model {model} was looking – try again.")
        if isinstance(exc, ollama.ResponseError):
            message = " ".join(str(exc.error).split())[:200]
            if exc.status_code == 404 or "not found" in message:
                return ToolError(f"The vision model {model} is not in Ollama – run `ollama pull {model}`.")
            if exc.status_code == 503:
                return ToolError("Ollama is busy (too many requests queued) – try again in a moment.")
            return ToolError(f"The vision model {model} could not look at it: {message}.")
        return ToolError(f"The vision model {model} failed: {short_reason(exc)}.")


# -- what is sent ------------------------------------------------------------------------------

def photo_jpeg(path: Path, side: int) -> bytes:
    """The photo as a person sees it (EXIF rotation applied), its long side at most ``side``
    (and :data:`MAX_SIDE_LIMIT`), as JPEG."""
    from tools.media import open_image

    return jpeg(open_image(path, min_size=max(side // 2, 1)), side)


def jpeg(image: Any, side: int, quality: int = 85) -> bytes:
    """An RGB PIL image as JPEG, its long side at most ``side`` (never enlarged)."""
    side = min(side, MAX_SIDE_LIMIT)
    if max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side))  # keeps the aspect ratio; reduces in steps, then resamples
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _prompt(what: str, question: str) -> str:
    return f"{INSTRUCTION.format(what=what)}\n\nRequest: {question}"


# -- what is shown -----------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_LAST_END = re.compile(r"[.!?…](?=\s|$)")


def first_sentences(text: str, count: int = 2, limit: int = 240) -> str:
    """The first ``count`` sentences of ``text`` on one line, within ``limit`` characters."""
    words = " ".join(text.split())
    head = " ".join(_SENTENCE_END.split(words)[:count])
    return head if len(head) <= limit else head[:limit - 1].rstrip() + "…"


def whole_sentences(text: str) -> str:
    """``text`` cut after its last complete sentence (an answer stopped by ``num_predict``),
    marked as cut; as it is when no sentence ends in it."""
    ends = [match.end() for match in _LAST_END.finditer(text)]
    return text[:ends[-1]] + " …" if ends else text + "…"
