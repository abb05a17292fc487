"""Answer backends behind one small interface, chosen by name (``BAOKAN_LLM`` / ``--llm``).

A backend only has to say what it is called and hand out a LangChain chat
model (``None`` for ``extractive``, which composes answers from source
sentences without any model). Everything else — retrieval, prompts, citation
checking, refusals, fallbacks — lives in :mod:`rag.chain` and is shared, so a
new backend is one small class plus one ``register_backend`` call.

* ``extractive`` — no LLM; the default and the fallback.
* ``local`` — llama.cpp on a GGUF file (``llm_model_path``), served by one
  :class:`rag.llamacpp.LlamaServer` child process per model, started lazily on
  the first question and reused for the life of the process. Without a path it
  loads the bundled SmolLM2-135M-Instruct: tiny, English-only and weak (it
  often ignores instructions and miscites); it exists so Baokan answers offline
  out of the box. Any bigger instruction-tuned GGUF (Qwen2.5-1.5B/7B-Instruct
  for Chinese) drops in through ``BAOKAN_LLM_MODEL_PATH``.
* ``openai`` — any OpenAI-compatible server (OpenAI, DeepSeek, Qwen/DashScope,
  vLLM, Ollama, a llama.cpp server) through ``langchain-openai``.

Keys come from settings (``BAOKAN_OPENAI_API_KEY`` or a settings file) only,
stay ``SecretStr`` and are scrubbed from any error text (:func:`scrub`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rag.config import Settings
from rag.errors import ConfigError, LLMError, UnknownBackendError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.llamacpp import LlamaServer

EXTRACTIVE = "extractive"
_NO_KEY = "not-needed"
"""Sent to servers that take no key (llama.cpp, vLLM, Ollama): the client insists on one."""


@runtime_checkable
class LLMBackend(Protocol):
    """What the chain needs from a backend."""

    name: str

    def chat_model(self) -> BaseChatModel | None:
        """The model that writes answers; ``None`` = answer extractively."""
        ...


BackendFactory = Callable[[Settings], LLMBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make a backend selectable by ``name`` (plugins call this too)."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str | None, settings: Settings) -> LLMBackend:
    """The backend called ``name`` (``None``: ``settings.llm``).

    Raises:
        UnknownBackendError: no such backend; the message lists the valid names.
    """
    key = (name or settings.llm or EXTRACTIVE).strip().lower()
    factory = _REGISTRY.get(key)
    if factory is None:
        raise UnknownBackendError("answer backend", key, backend_names())
    return factory(settings)


# --- extractive ----------------------------------------------------------------


class ExtractiveBackend:
    """Marker backend: the chain answers with ``rag.answer.ExtractiveAnswerer``."""

    name = EXTRACTIVE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def chat_model(self) -> BaseChatModel | None:
        return None


# --- OpenAI-compatible -----------------------------------------------------------


def _chat_openai(settings: Settings, base_url: str, model: str, key: str) -> BaseChatModel:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=SecretStr(key),
        timeout=settings.llm_timeout,
        max_retries=0,  # a dead server must fail now, with sources shown, not after back-off
        max_tokens=settings.llm_max_tokens,  # type: ignore[call-arg]  # alias of max_completion_tokens
        temperature=settings.llm_temperature,
        streaming=True,
    )


class OpenAIBackend:
    """Any server that speaks the OpenAI chat-completions API."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def chat_model(self) -> BaseChatModel | None:
        s = self.settings
        key = s.openai_api_key.get_secret_value() if s.openai_api_key is not None else ""
        if not key and "api.openai.com" in s.openai_base_url:
            raise ConfigError(
                "The 'openai' backend has no API key for api.openai.com.",
                "Set BAOKAN_OPENAI_API_KEY, or point BAOKAN_OPENAI_BASE_URL at a local server.",
            )
        return _chat_openai(s, s.openai_base_url, s.openai_model, key or _NO_KEY)


# --- local llama.cpp ---------------------------------------------------------------

_SERVERS: dict[tuple[str, int], LlamaServer] = {}
_SERVERS_LOCK = threading.Lock()


def local_server(model_path: Path | None, n_ctx: int) -> LlamaServer:
    """The process-wide llama.cpp server for this GGUF, started on first use.

    One per (model, context size): loading a model costs seconds and memory,
    so every question and every UI session shares it. ``rag.llamacpp`` stops
    it at interpreter exit. A server that died is restarted on the next call.
    """
    from rag.llamacpp import LlamaServer, _resolve_model

    path = _resolve_model(model_path)
    key = (str(path), n_ctx)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = LlamaServer(path, n_ctx=n_ctx)
            _SERVERS[key] = server
        if not server.is_running():
            server.start()
        return server


def stop_local_servers() -> None:
    """Stop every server :func:`local_server` started (tests; the UI on shutdown)."""
    with _SERVERS_LOCK:
        for server in _SERVERS.values():
            server.stop()
        _SERVERS.clear()


class LocalBackend:
    """llama.cpp on a GGUF file, through its own OpenAI-compatible server.

    A child-process server rather than the in-process ``LocalLlama`` because it
    streams through the same, well-tested OpenAI client path as ``openai``, a
    crash in native code cannot take the UI down, and llama.cpp's log stays out
    of the console. The bundled SmolLM2-135M is English-only and weak; any
    bigger GGUF drops in through ``llm_model_path``.
    """

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def chat_model(self) -> BaseChatModel | None:
        server = local_server(self.settings.llm_model_path, self.settings.llm_context_size)
        return _chat_openai(self.settings, server.base_url, server.model, _NO_KEY)


register_backend(EXTRACTIVE, ExtractiveBackend)
register_backend("openai", OpenAIBackend)
register_backend("local", LocalBackend)


# --- errors ------------------------------------------------------------------------

_KEYISH = re.compile(r"\b(sk|pk|key|tok)-[A-Za-z0-9_\-]{6,}\b")


def scrub(text: str, settings: Settings | None = None) -> str:
    """Remove the configured key (and anything key-shaped) from ``text``.

    Servers echo the bad key in 401 messages ("Incorrect API key provided:
    sk-abc..."); those messages must reach logs and the UI without it.
    """
    if settings is not None and settings.openai_api_key is not None:
        secret = settings.openai_api_key.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
            if len(secret) > 8:
                text = text.replace(secret[:8], "***")
    return _KEYISH.sub("***", text)


def llm_error(exc: BaseException, backend: str, settings: Settings) -> LLMError:
    """One clear line for any failure of the model call, with the key scrubbed."""
    if isinstance(exc, LLMError):
        return LLMError(scrub(exc.message.splitlines()[0], settings), scrub(exc.fix, settings))
    where = settings.openai_base_url if backend == "openai" else "the local llama.cpp server"
    kind = type(exc).__name__
    detail = " ".join(scrub(str(exc), settings).split())[:200]
    # langchain-openai wraps openai's errors (OpenAIConnectionError, ...): judge by the whole chain.
    names: set[str] = set()
    status = None
    cur: BaseException | None = exc
    while cur is not None and len(names) < 50:
        names |= {c.__name__ for c in type(cur).__mro__}
        status = status or getattr(cur, "status_code", None)
        cur = cur.__cause__ or cur.__context__
    if names & {"APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout"}:
        return LLMError(
            f"The {backend} model at {where} did not answer within {settings.llm_timeout:g} s.",
            "Raise BAOKAN_LLM_TIMEOUT or use a faster model.",
        )
    if "AuthenticationError" in names or "PermissionDeniedError" in names or status in (401, 403):
        return LLMError(
            f"The {backend} model at {where} rejected the API key ({status or 'unauthorized'}).",
            "Check BAOKAN_OPENAI_API_KEY.",
        )
    if names & {"APIConnectionError", "ConnectError", "ConnectionError", "RemoteProtocolError", "ReadError"}:
        return LLMError(
            f"The {backend} model at {where} cannot be reached or dropped the connection ({detail or kind}).",
            "Start the server or fix BAOKAN_OPENAI_BASE_URL; BAOKAN_LLM_FALLBACK=true answers extractively.",
        )
    if "context size" in detail or "context length" in detail:
        return LLMError(
            f"The prompt is too long for the {backend} model ({detail}).",
            "Raise the server's context or lower BAOKAN_LLM_CONTEXT_SIZE to what it serves.",
        )
    if "NotFoundError" in names or status == 404:
        return LLMError(
            f"The {backend} server at {where} has no model {settings.openai_model!r} ({detail}).",
            "Set BAOKAN_OPENAI_MODEL to a model the server lists.",
        )
    return LLMError(f"The {backend} model failed: {kind}: {detail}", "")


def describe(backend: LLMBackend) -> dict[str, Any]:
    """What the UI shows about the active backend (never the key)."""
    s: Settings | None = getattr(backend, "settings", None)
    out: dict[str, Any] = {"name": backend.name}
    if s is not None and backend.name == "openai":
        out |= {"base_url": s.openai_base_url, "model": s.openai_model}
    if s is not None and backend.name == "local":
        out["model_path"] = str(s.llm_model_path) if s.llm_model_path else "bundled SmolLM2-135M-Instruct"
    return out
