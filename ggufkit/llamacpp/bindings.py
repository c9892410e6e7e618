"""Import ``llama_cpp`` so that it loads *our* CMake build's libllama, not a copy of its own, with
llama.cpp's own log routed to ggufkit's log folder; and a GGUF's vocabulary alone.

llama.cpp logs through one callback. llama-cpp-python 0.3.36 installs one that reads the log
levels of an older ggml (1 info, 2 warn, 3 error), while the pinned ggml numbers them 1 debug,
2 info, 3 warn, 4 error: every warning passed for an error, and ``verbose=False`` let it through
(``llama_context: n_ctx_seq (512) > n_ctx_train (0)`` on every vocabulary-only load). ggufkit's
callback writes every line to ``$GGUFKIT_HOME/logs/<time>-<pid>-llama.log`` and shows it on stderr
only when ggufkit logs at debug level (``-v``; a spawned child learns it from
``GGUFKIT_LOG_LEVEL``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from ggufkit.core.errors import InputError, ToolMissingError
from ggufkit.llamacpp.attention import resolved_from_log
from ggufkit.llamacpp.build import current_build

# The pinned ggml's enum ggml_log_level (ggml/include/ggml.h).
LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CONT = 1, 2, 3, 4, 5
LEVEL_ENV = "GGUFKIT_LOG_LEVEL"  # the parent's logging level, for spawned children


_loaded: ModuleType | None = None
_loading = threading.Lock()


def load_llama_cpp() -> ModuleType:
    """Set LLAMA_CPP_LIB_PATH to the build's library folder, then import llama_cpp (its log
    routed by :func:`route_llama_log`). Thread-safe: a second thread waits for the first one's
    import, never taking the half-initialised module from ``sys.modules``."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _loading:
        if _loaded is None:
            _loaded = _import_llama_cpp()
        return _loaded


def _import_llama_cpp() -> ModuleType:
    info = current_build()
    os.environ["LLAMA_CPP_LIB_PATH"] = str(info.lib_dir)
    try:
        import llama_cpp
    except ImportError as exc:
        raise ToolMissingError(
            f"the llama-cpp-python bindings are not importable: {exc}",
            hint="run `ggufkit build` (it installs them against the build, without recompiling)",
        ) from exc
    from ggufkit.llamacpp.chat_deferred import defer_chat_templates

    defer_chat_templates(llama_cpp)  # no chat template is compiled when a model is opened
    route_llama_log(llama_cpp)
    return llama_cpp


def show_llama_log() -> bool:
    """Whether llama.cpp's own lines go to stderr too: only at ggufkit's debug level (-v)."""
    level = logging.getLogger("ggufkit").level
    if level == logging.NOTSET:  # not set up here: a spawned child, or a library caller
        try:
            level = int(os.environ.get(LEVEL_ENV, "") or logging.WARNING)
        except ValueError:
            level = logging.WARNING
    return level <= logging.DEBUG


class _LlamaLog:
    """llama.cpp's log lines: all of them to a log file (opened at the first line), and to
    stderr with -v."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self.last = LOG_INFO
        # What the last context made of flash attention "auto" (its log says so when it decides).
        self.flash_attn: str | None = None
        # stderr as it was when the callback was installed: llama-cpp-python points fd 2 at
        # /dev/null while it loads a model (``verbose=False``), which would hide even -v's lines.
        self.stderr: IO[str] | None = None

    def keep_stderr(self) -> None:
        if self.stderr is not None:
            return
        try:
            fd = os.dup(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):  # a stream without a descriptor
            return
        self.stderr = open(fd, "w", encoding="utf-8", errors="replace", closefd=True)  # noqa: SIM115

    def __call__(self, level: int, text: bytes | None, _user: Any) -> None:
        try:
            level = self.last if level == LOG_CONT else level
            self.last = level
            line = (text or b"").decode("utf-8", errors="replace")
            if level == LOG_DEBUG:
                return  # as llama.cpp's own tools do without --verbose
            self.flash_attn = resolved_from_log(line) or self.flash_attn
            if self.file is None:
                from ggufkit.llamacpp.runner import new_log_path

                self.path = new_log_path("llama")
                self.file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            self.file.write(line)
            self.file.flush()
            if show_llama_log():
                stream = self.stderr or sys.stderr
                stream.write(line)
                stream.flush()
        except Exception:  # an exception must never cross back into C
            pass


_router = _LlamaLog()
_callbacks: list[Any] = []  # the ctypes callback must outlive every call from C


def log_callback(llama_cpp: ModuleType) -> Any:
    """ggufkit's log callback as a ctypes function, kept alive for the process (libmtmd takes
    it too: ``mtmd_log_set``)."""
    _router.keep_stderr()
    callback = llama_cpp.llama_log_callback(_router)
    _callbacks.append(callback)
    return callback


def route_llama_log(llama_cpp: ModuleType) -> None:
    """Install ggufkit's log callback in libllama (and, through it, ggml)."""
    llama_cpp.llama_log_set(log_callback(llama_cpp), ctypes.c_void_p(0))


def flash_attn_resolved() -> str | None:
    """ "on"/"off": what the last context made here resolved flash attention ``auto`` to (llama.cpp
    logs its decision); None before any such context."""
    return _router.flash_attn


def llama_log_path() -> Path | None:
    """This process's llama.cpp log, once a line was written."""
    return _router.path


class Vocab:
    """A GGUF's vocabulary: llama.cpp loads no weights and makes no context."""

    def __init__(self, llama_cpp: ModuleType, vocab: Any) -> None:
        self._llama_cpp = llama_cpp
        self._vocab = vocab

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        """As ``Llama.tokenize``: ``add_bos`` adds the model's special tokens, ``special``
        parses special tokens written in the text."""
        lib = self._llama_cpp
        # With no room for tokens, llama_tokenize returns minus the number it needs.
        need = -int(lib.llama_tokenize(self._vocab, text, len(text), None, 0, add_bos, special))
        if need <= 0:
            return []
        ids = (lib.llama_token * need)()
        n = int(lib.llama_tokenize(self._vocab, text, len(text), ids, need, add_bos, special))
        return list(ids[:n])

    def token_bos(self) -> int:
        return int(self._llama_cpp.llama_vocab_bos(self._vocab))

    def n_vocab(self) -> int:
        return int(self._llama_cpp.llama_vocab_n_tokens(self._vocab))


@contextmanager
def vocab_only(path: str | Path) -> Iterator[Vocab]:
    """A GGUF's vocabulary alone (a context on a vocabulary-only model would warn that its
    training context is 0)."""
    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    handle = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not handle:
        raise InputError(
            f"llama.cpp cannot load the vocabulary of {path}",
            hint="check the file with `ggufkit inspect`",
            path=Path(path),
        )
    try:
        yield Vocab(llama_cpp, llama_cpp.llama_model_get_vocab(handle))
    finally:
        llama_cpp.llama_model_free(handle)
