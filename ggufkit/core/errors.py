"""The one error hierarchy of ggufkit.

Library code raises these; only :func:`ggufkit.cli.main` turns them into messages and exit codes
(see :func:`exit_code_for` and :func:`format_error`). Every error carries a hint that says what
to do next.
"""

from __future__ import annotations

from pathlib import Path

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class GGUFKitError(Exception):
    """Base class. ``hint`` tells the user what to do next; ``path`` names the file involved."""

    exit_code = EXIT_RUNTIME
    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return self.message


class UsageError(GGUFKitError):
    """Bad arguments or options: exit code 2."""

    exit_code = EXIT_USAGE


class InputError(GGUFKitError):
    """An input file or directory is missing, unreadable or malformed."""


class ConfigError(InputError):
    """config.json (or another config file) is missing, not JSON, or lacks a key."""


class TokenizerError(InputError):
    """Tokenizer files are missing or inconsistent with the model."""


class UnsupportedArchitectureError(InputError):
    """No converter is registered for the model's architecture."""


class GGUFFormatError(InputError):
    """A file is not a GGUF file, or its header is truncated or inconsistent."""


class LegacyFormatError(InputError):
    """A pre-GGUF GGML/GGMF/GGJT file is truncated, corrupt, or of a kind not supported."""


class SafetensorsFormatError(InputError):
    """A safetensors file's header is corrupt, truncated or lies about its offsets."""


class ChecksumError(GGUFKitError):
    """A downloaded or cached file does not have the pinned sha256."""


class DiskSpaceError(GGUFKitError):
    """Not enough free disk for the output."""


class MemoryShortageError(GGUFKitError):
    """Not enough RAM for the step."""


class ToolMissingError(GGUFKitError):
    """A llama.cpp binary, a compiler, cmake or an optional Python package is missing."""

    default_hint = "run `ggufkit build` (or `ggufkit doctor` to see what is missing)"


class ToolOutputError(GGUFKitError):
    """A child process (a compiler, a llama.cpp binary) failed: carries its last output lines
    (``tail``) and its full log (``log_path``), shown under the message."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        path: str | Path | None = None,
        log_path: str | Path | None = None,
        tail: str = "",
    ) -> None:
        super().__init__(message, hint=hint, path=path)
        self.log_path = Path(log_path) if log_path else None
        self.tail = tail


class BuildError(ToolOutputError):
    """CMake configuration or compilation failed."""


class ToolFailedError(ToolOutputError):
    """A llama.cpp binary exited with an error. Carries its last output lines and the log path."""


class ToolCrashedError(ToolFailedError):
    """A llama.cpp binary or an isolated llama.cpp call was killed by a signal (a crash)."""

    def __init__(
        self,
        message: str,
        *,
        signal_name: str,
        hint: str | None = None,
        path: str | Path | None = None,
        log_path: str | Path | None = None,
        tail: str = "",
    ) -> None:
        super().__init__(message, hint=hint, path=path, log_path=log_path, tail=tail)
        self.signal_name = signal_name


class ConversionError(GGUFKitError):
    """The checkpoint cannot be converted (shape mismatch, missing tensor, ...)."""


class NativeUnsupportedError(ConversionError):
    """ggufkit's own converter cannot take this checkpoint (its tokenizer or a config setting);
    the upstream engine may. Raised before anything is written."""


class DeltaError(GGUFKitError):
    """Base and delta do not fit together."""


class AdapterError(DeltaError):
    """A LoRA adapter cannot be read, is of a kind ggufkit does not apply, or does not fit its base."""


class QuantizeError(GGUFKitError):
    """A quantization request cannot be carried out."""


class HubError(GGUFKitError):
    """A Hugging Face Hub download failed."""


class WorkspaceError(GGUFKitError):
    """ggufkit.toml is missing, malformed, or the workspace is locked."""


class EvaluationError(GGUFKitError):
    """An evaluation, benchmark or generation step failed."""


def disk_full(exc: OSError, what: str, path: str | Path | None = None) -> DiskSpaceError | None:
    """The DiskSpaceError for an OSError that says the disk is full (ENOSPC, EDQUOT), else None."""
    import errno

    if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return None
    return DiskSpaceError(
        f"the disk filled up while writing {what}",
        hint="free some space or write the output elsewhere, then run again",
        path=path,
    )


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, GGUFKitError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_RUNTIME


def format_error(error: BaseException) -> str:
    """The user-facing text for an error: one line, then the tool's tail, then what to do."""
    if isinstance(error, KeyboardInterrupt):
        return "Interrupted; temporary files were removed."
    if not isinstance(error, GGUFKitError):
        return (
            f"internal error: {type(error).__name__}: {error}\n"
            "  Run again with GGUFKIT_DEBUG=1 for the traceback, and report it."
        )
    lines = [error.message]
    if isinstance(error, ToolOutputError):
        if error.tail:
            lines.append("  last output:")
            lines.extend("    " + line for line in error.tail.rstrip().splitlines())
        if error.log_path:
            lines.append(f"  full log: {error.log_path}")
    if error.hint:
        lines.append(f"  hint: {error.hint}")
    return "\n".join(lines)
