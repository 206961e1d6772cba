"""What every tool shares: the tool contract, typed results, errors, device choice.

A tool knows its model and nothing about chat. It receives attachment *ids*
(never paths from a language model) and turns them into files through the
:class:`AttachmentResolver` it is handed in its :class:`ToolContext`.
Heavy libraries are imported inside ``_load()`` / ``run()``, never at module import.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from tools.settings import Setting

#: The argument that names an attachment (by the id its adapter registered) in a tool's
#: parameters.
ATTACHMENT_ARGUMENT = "attachment_id"

#: Progress callback: fraction done in [0, 1] and a short status text.
Progress = Callable[[float, str], None]


class ToolError(Exception):
    """A problem a person can act on (bad input, unknown attachment, missing model).

    The message is meant to be shown as it is: no traceback, no jargon.
    """


class Cancelled(ToolError):
    """The person cancelled the turn while the tool worked (raised where it reports progress)."""

    def __init__(self) -> None:
        super().__init__("cancelled by the user while it ran")


class BadCall(ToolError):
    """The call itself is wrong — invalid arguments, an unknown attachment id, an attachment of
    a kind the tool does not take: the caller's mistake (a language model's, usually), not a
    finding about the input. The model is told; the person is not shown it as a result."""


class ModelLoadError(ToolError):
    """A model could not be loaded; says which, from where, and what to set."""

    def __init__(self, what: str, source: str, variable: str, reason: str) -> None:
        self.what, self.source, self.variable, self.reason = what, source, variable, reason
        if variable == "ASSISTANT_MODELS_DIR":
            fix = ("Put the model there, under ASSISTANT_MODELS_DIR in the layout the README shows "
                   "(`assistant models fetch --to DIR` makes one on a machine with internet), "
                   "or point this tool's own ASSISTANT_* variable at it")
        else:
            fix = (f"Set {variable} to a local model path (or ASSISTANT_MODELS_DIR to a models "
                   "directory), or run `assistant models fetch` on a machine with internet access")
        super().__init__(f"Could not load the {what} model from {source}: {reason}. {fix}.")


def short_reason(exc: BaseException) -> str:
    """The first line of an exception, for messages (never a traceback). The one such helper."""
    text = str(getattr(exc, "reason", "") or exc).strip()  # URLError keeps it in .reason
    first = text.splitlines()[0].strip().rstrip(":") if text else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


# -- models: where a tool's model comes from, how to fetch it and check it -------------------

@dataclass(frozen=True)
class ModelCheck:
    """What ``doctor`` learns about a model without loading it."""

    status: str  # ok | warn | fail | skip (an optional model that is off)
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A tool's model: its default source, the variable that overrides it, its folder in a
    models directory, how ``models fetch`` gets it and how ``doctor`` checks it.

    ``fetch(dest)`` downloads the default into ``dest`` (or the library's cache when None)
    and returns where it is. ``check_local(path)`` says what is wrong with local files (None:
    fine). ``check_cached(value)`` says whether a non-local source is in its cache (None: the
    value is not of that form).
    """

    what: str  # e.g. "object detection (DETR)"
    default: str
    variable: str
    folder: str
    fetch: Callable[[Path | None], Path]
    check_local: Callable[[Path], str | None]
    check_cached: Callable[[str], ModelCheck | None] = lambda value: None
    fetch_source: str = ""  # how the fetched source is named to people, if not ``default``


# -- assistant analyze options ---------------------------------------------------------------

@dataclass(frozen=True)
class AnalyzeOption:
    """A flag of ``assistant analyze`` that sets one parameter of the tools that have it."""

    flag: str  # e.g. "--threshold"
    param: str  # the Params field it sets
    kind: type
    metavar: str
    help: str


# -- what routes an attachment to a tool -----------------------------------------------------

@dataclass(frozen=True)
class TextTrigger:
    """A tool also runs on attachments of ``kinds`` when the user's text matches ``pattern``."""

    kinds: frozenset[str]
    pattern: re.Pattern[str]

    def wants(self, kind: str, text: str) -> bool:
        return kind in self.kinds and self.asked(text)

    def asked(self, text: str) -> bool:
        """Whether ``text`` asks what the tool answers (whatever the attachment)."""
        return bool(self.pattern.search(text))


class Label(BaseModel):
    """One class and its confidence."""

    label: str
    score: float


class ToolResult(BaseModel):
    """Base of every tool's typed result; serialises to JSON.

    ``labels`` are sorted by score, highest first. ``outputs`` are files the tool
    produced for the user to see (annotated photo or video).
    """

    tool: str
    labels: list[Label]
    outputs: list[str] = []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def summary(self) -> str:
        """A short plain-English account of the findings, for people (CLI, no-LLM mode).

        Tools override this where they have more to say than their labels.
        """
        top = ", ".join(f"{item.label} ({item.score:.0%})" for item in self.labels[:5])
        return f"{self.tool}: {top or 'nothing found'}"

    def result_line(self) -> str:
        """One compact line of what was measured (``image · tabby 87%, tiger cat 9%``), shown
        under a reply next to the model's words. Tools override it to add what matters."""
        return " · ".join([self.tool, top_labels(self.labels) or "nothing found", *self.line_details()])

    def line_details(self) -> list[str]:
        """Extra parts of :meth:`result_line` after the top labels."""
        return []

    def transcript(self) -> str | None:
        """The words spoken in the input, for tools that transcribe (None: no words)."""
        return None

    def cues(self) -> dict[str, float]:
        """What this result found that another tool may follow on, by name, with a score in
        [0, 1] (the audio tool's ``speech``). A tool's :meth:`Tool.follows` reads these, never
        another tool's fields."""
        return {}


def top_labels(labels: Iterable[Label], limit: int = 3, floor: float = 0.05) -> str:
    """The best labels as ``Siren 76%, Emergency vehicle 53%`` (at least one, then those ≥ ``floor``)."""
    items = list(labels)
    shown = [item for item in items[:limit] if item.score >= floor] or items[:1]
    return ", ".join(f"{item.label} {item.score:.0%}" for item in shown)


def sorted_labels(pairs: Iterable[tuple[str, float]], top_k: int | None = None) -> list[Label]:
    """Labels sorted by score (highest first), optionally cut to ``top_k``."""
    labels = sorted((Label(label=str(name), score=float(score)) for name, score in pairs),
                    key=lambda item: item.score, reverse=True)
    return labels if top_k is None else labels[:top_k]


class AttachmentResolver(Protocol):
    """Turns an attachment id registered by an adapter into a file on disk."""

    def path_of(self, attachment_id: str, kinds: Collection[str]) -> Path:
        """The file behind ``attachment_id``; :class:`ToolError` if unknown or not of ``kinds``."""
        ...


@dataclass
class ToolContext:
    """What a tool gets besides its parameters for one call."""

    attachments: AttachmentResolver
    output_dir: Path
    progress: Progress | None = None
    #: Set when the person cancels the turn: long work stops at its next :meth:`report`.
    cancel: threading.Event | None = None
    #: What the person asked with the attachments, in their words ("" when nothing): for
    #: tools that answer a question about what they analyse.
    question: str = ""
    #: The language model in use, by its name on the model server (Ollama); None when no
    #: language model is used (the no-LLM mode): no tool may then call the model server.
    llm_model: str | None = None

    def report(self, fraction: float, message: str) -> None:
        """Tell how far the work is; :class:`Cancelled` once the turn is cancelled (so that a
        long video or recording stops within a step, not when it is done)."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    def output_path(self, attachment_id: str, source: Path, ending: str) -> Path:
        """Where a tool writes what it made of an attachment: ``{name}-{id}{ending}`` in the
        output folder (created), so what is made of one attachment never replaces what was
        made of another of the same name. The name loses control characters and is cut to
        fit any file system."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem = source.stem.encode()[:_MAX_STEM_BYTES].decode(errors="ignore")
        return self.output_dir / _UNSAFE_IN_NAMES.sub("_", f"{stem}-{attachment_id.strip()}{ending}")


#: Control characters, and what would make a path of a name, replaced in output names.
_UNSAFE_IN_NAMES = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")
#: Bytes of a source's name kept in an output's name (file systems allow 255 in all).
_MAX_STEM_BYTES = 160


@dataclass(frozen=True)
class ModelServer:
    """The Ollama server the language model runs on, and the options its chat requests use:
    a tool that sends a request of its own to a model the chat also uses sends the same
    ``num_ctx`` and ``keep_alive``, or Ollama reloads the model for each of them."""

    url: str
    num_ctx: int
    keep_alive: str
    #: Whether the conversations' language model runs here too (not with ASSISTANT_LLM_API=openai).
    serves_chat: bool = True


@dataclass
class ToolConfig:
    """What a tool is built from: its model source, the device, its settings' values (by
    variable), and a place to share one loaded model between tools of a module."""

    source: ModelSource | None
    device: str | None
    values: Mapping[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)
    #: The model server (Ollama) for tools whose model runs there, with the language model's
    #: request options (None: not configured).
    model_server: ModelServer | None = None

    def share(self, key: str, make: Callable[[], Any]) -> Any:
        """One object per ``key`` for all tools built from this configuration."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


P = TypeVar("P", bound=BaseModel)


class Tool(ABC, Generic[P]):
    """One tool: a name and description an LLM can choose by, validated parameters,
    a model that loads lazily once and stays warm, and a typed result.

    A tool module declares everything about its tools on the class; the registry
    (:mod:`tools.registry`) finds them and everything else is derived from these:

    - ``name``, ``description`` (what the model reads), ``Params`` (its parameters);
    - ``kinds``: the attachment kinds it accepts; ``routes``: those it runs on by itself
      for every attachment; ``trigger``: when it also runs because of what the text asks;
      :meth:`follows`: when it also runs because of what another routed tool found;
      :meth:`text_arguments`: when it runs on a passage the user's message quotes;
      :meth:`asked_for`: whether a message asks what it measures (a model without native
      tools is offered only such tools, and those with something new to analyse);
    - ``model``: its :class:`ModelSpec`; ``settings``: its own ``ASSISTANT_*`` settings;
    - ``analyze_options``: its flags for ``assistant analyze``;
    - :meth:`create`: how it is built from a :class:`ToolConfig`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    #: Attachment kinds this tool analyses ("image", "audio", "video", "text"); empty for none.
    kinds: ClassVar[frozenset[str]] = frozenset()
    #: Attachment kinds it runs on by itself, whatever the model decides.
    routes: ClassVar[frozenset[str]] = frozenset()
    #: When it also runs on an attachment because of what the user's text asks.
    trigger: ClassVar[TextTrigger | None] = None
    model: ClassVar[ModelSpec | None] = None
    settings: ClassVar[tuple[Setting, ...]] = ()
    analyze_options: ClassVar[tuple[AnalyzeOption, ...]] = ()
    #: It takes seconds to minutes an input (a vision-language model on a CPU): routed after
    #: the other tools of an attachment, so their results are shown first.
    slow: ClassVar[bool] = False
    #: Its model runs on the language model's server (Ollama), which it asks itself: it always
    #: runs here, never on a tools service (which knows neither the conversation's model nor
    #: the person's question).
    on_model_server: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check a concrete tool's declaration when its class is defined."""
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_"):  # a shared base of a module's tools
            return
        for attribute in ("name", "description", "Params"):
            if not hasattr(cls, attribute):
                raise TypeError(f"tool {cls.__name__} does not declare {attribute}")
        if not (set(cls.routes) <= set(cls.kinds)):
            raise TypeError(f"tool {cls.name}: routes {set(cls.routes)} are not all in kinds")

    @classmethod
    def create(cls, config: ToolConfig) -> Tool[Any]:
        """Build the tool from its configuration; tools with settings override this."""
        raise NotImplementedError(f"tool {cls.name} does not say how it is built (create)")

    @classmethod
    def follows(cls, kind: str, result: ToolResult) -> bool:
        """Whether it also runs on an attachment of ``kind`` after another routed tool gave
        ``result`` for it (speech after the audio tool heard someone talking)."""
        return False

    def routed_arguments(self, attachment_id: str, attachments: AttachmentResolver) -> dict[str, Any]:
        """The arguments of the call it gets for an attachment it runs on by itself."""
        return {ATTACHMENT_ARGUMENT: attachment_id}

    def unavailable(self, llm_model: str | None) -> str | None:
        """Why the tool cannot run now where the language model in use is ``llm_model`` (None:
        none is), as one sentence that says how to enable it; None when it can. A tool whose
        model runs elsewhere (on Ollama) overrides it; routing, the calls offered to the model,
        ``/tools`` and ``doctor`` honour it. Called for every attachment: it must be quick."""
        return None

    def check(self, llm_model: str | None) -> ModelCheck | None:
        """What ``doctor`` says about a model of this tool that its :class:`ModelSpec` cannot
        check (a model on a server), for the language model ``llm_model``; None: nothing."""
        return None

    @classmethod
    def text_arguments(cls, text: str) -> dict[str, Any] | None:
        """The arguments of a call on the user's own message, when it plainly asks this tool's
        question about a passage it quotes (sentiment of «…»); None: it does not."""
        return None

    def headline(self) -> str:
        """The first sentence of the description, for people (a channel's list of tools)."""
        text = " ".join(self.description.split())
        end = text.find(". ")
        return text if end < 0 else text[:end + 1]

    @classmethod
    def asked_for(cls, text: str) -> bool:
        """Whether the user's message asks what this tool measures (by default: its
        ``trigger``'s pattern matches)."""
        return cls.trigger is not None and cls.trigger.asked(text)

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @abstractmethod
    def source(self) -> str:
        """Where the model comes from (hub id or local path), for messages and `doctor`."""

    @abstractmethod
    def _load(self) -> Any:
        """Load the model (heavy imports happen here); raise :class:`ModelLoadError`."""

    @abstractmethod
    def run(self, params: P, ctx: ToolContext) -> ToolResult:
        """Run on validated params. The model is loaded (``self._model``)."""

    def ensure_loaded(self) -> Any:
        """Load the model once; later calls return the warm one."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Validate raw arguments (from an LLM or the CLI), load, and run.

        Calls of one tool are serialised: models are shared and some runtimes
        (TFLite) are not thread-safe.
        """
        params = self.validate(arguments)
        self.ensure_loaded()
        with self._lock:
            return self.run(params, ctx)

    def validate(self, arguments: dict[str, Any]) -> P:
        try:
            return self.Params.model_validate(arguments)  # type: ignore[return-value]
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors()
            )
            raise BadCall(f"Invalid arguments for {self.name}: {problems}") from None

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI/Ollama function schema, from its description and Params."""
        parameters = self.Params.model_json_schema(schema_generator=_ModelFacingSchema)
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description,
                         "parameters": parameters},
        }


class _ModelFacingSchema(GenerateJsonSchema):
    """Parameters as a language model reads them, in few tokens (they are in every request):
    no titles, and a field that may be left out (default None) is its type alone, not
    ``anyOf [type, null]`` with ``default: null``. Validation still accepts null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def select_device(override: str | None = None) -> str:
    """``override`` (from ASSISTANT_DEVICE) if given, else CUDA when available, else CPU."""
    choice = (override or os.environ.get("ASSISTANT_DEVICE") or "").strip().lower()
    if choice:
        if choice.startswith("cuda") and not cuda_available():
            raise ToolError(f"ASSISTANT_DEVICE={choice} but no CUDA device is available; "
                            "use ASSISTANT_DEVICE=cpu or leave it unset.")
        return choice
    return "cuda" if cuda_available() else "cpu"


def cuda_available() -> bool:
    """``torch.cuda.is_available()`` without its "CUDA initialization: Found no NVIDIA
    driver" warning on machines that have CUDA libraries but no GPU (no GPU is normal here)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="CUDA initialization", category=UserWarning)
        return torch.cuda.is_available()


@dataclass(frozen=True)
class ModelSource:
    """A configured model location: the value and the variable it came from."""

    value: str
    variable: str

    @property
    def is_local(self) -> bool:
        return Path(self.value).expanduser().exists()


def import_tensorflow() -> Any:
    """Import TensorFlow so that PyTorch can still be used in the same process.

    Triton (PyTorch's compiler, imported by torchvision and transformers) crashes the
    process with a segmentation fault when it is imported *after* TensorFlow; imported
    before, both work. Every TensorFlow import in the project goes through here.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    with native_stderr_silenced():  # absl's "before absl::InitializeLog()" and cudart_stub lines
        import tensorflow

    return tensorflow


def import_tensorflow_hub() -> Any:
    """TensorFlow (as :func:`import_tensorflow`), then tensorflow-hub without its warning
    that it imports the deprecated ``pkg_resources``."""
    import_tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow_hub

    return tensorflow_hub


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration: native runtimes (TFLite, absl)
    log from C++ straight to it, past Python's ``sys.stderr`` and ``TF_CPP_MIN_LOG_LEVEL``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
