"""The upstream engine: the pinned llama.cpp ``convert_hf_to_gguf.py`` with its own gguf-py.

Used for architectures ggufkit has no converter for, and by ``auto`` for checkpoints the native
converter cannot take. The PyPI ``gguf`` does not work with that
script (it lacks ``LazyChunkedTensor``), so it runs in a child process (``_upstream_child.py``)
that puts the pinned gguf-py first and gives upstream ggufkit's answers where upstream would stop
or be wrong: the pre-tokenizer of a BPE tokenizer whose hash upstream does not list (derived
from tokenizer.json as for native BLOOM), Falcon's multi-query head count, the chat template.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.convert.chat_templates import ChatTemplateChoice, child_settings
from ggufkit.convert.result import EngineResult
from ggufkit.core.errors import (
    GGUFFormatError,
    GGUFKitError,
    InputError,
    ToolFailedError,
    ToolMissingError,
)
from ggufkit.core.fsutil import atomic_output, check_free_disk
from ggufkit.core.log import get_logger, progress
from ggufkit.llamacpp.runner import run_tool
from ggufkit.llamacpp.source import ensure_source

if TYPE_CHECKING:
    from ggufkit.convert.upstream_source import UpstreamSource
    from ggufkit.formats.origin import SourceInfo

log = get_logger("convert.upstream")

SCRIPT = "convert_hf_to_gguf.py"
# The child's request for the derived pre-tokenizer (it then waits for the answer file).
NEED_PRE_TOKENIZER = "ggufkit-request: pre-tokenizer"
RUNTIME_TOKENIZER = "runtime-tokenizer.json"  # the child's tokenizer as transformers runs it


def _source() -> Path:
    source = ensure_source()
    if not (source / SCRIPT).is_file() or not (source / "gguf-py" / "gguf").is_dir():
        raise ToolMissingError(
            f"the pinned llama.cpp source at {source} lacks {SCRIPT} or gguf-py",
            hint=f"delete {source} and run `ggufkit build` to unpack it again",
        )
    return source


@functools.cache
def upstream_architectures() -> frozenset[str]:
    """HF class names the pinned upstream converter registers (read from its source, not run)."""
    source = _source()
    files = [source / SCRIPT, *sorted((source / "conversion").glob("*.py"))]
    names: set[str] = set()
    register = re.compile(r"\.register\(([^)]*)\)", re.S)
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError:
            continue
        for match in register.finditer(text):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", match.group(1)))
    return frozenset(names)


def upstream_supports(hf_arch: str) -> bool:
    try:
        return hf_arch in upstream_architectures()
    except Exception as exc:  # no source: treated as "not known upstream"
        log.debug("cannot read the upstream converter's registry: %s", exc)
        return False


def _check_torch() -> None:
    """torch is the child's import: here only whether it is installed (importing it costs
    seconds)."""
    if importlib.util.find_spec("torch") is None:
        raise ToolMissingError(
            "the upstream converter needs torch, which is not installed",
            hint="pip install 'ggufkit[torch]'",
        )


def derived_pre_tokenizer(model_dir: Path, runtime: Path | None = None) -> str | None:
    """The pre-tokenizer ggufkit derives from tokenizer.json, or None (no BPE, or cannot tell).
    ``runtime``: the tokenizer as the upstream child's transformers runs it, if it wrote one
    (else transformers is asked here)."""
    from ggufkit.convert.vocab_bpe import (
        check_text_hash,
        detect_pre_tokenizer,
        load_tokenizer_json,
    )

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        data = load_tokenizer_json(model_dir)
        if runtime is not None and runtime.is_file():
            tokenizer = Tokenizer.from_str(runtime.read_text(encoding="utf-8"))
        else:
            tokenizer = _as_transformers_loads_it(model_dir) or Tokenizer.from_file(str(path))
        loaded = json.loads(tokenizer.to_str())
        data = {**data, "pre_tokenizer": loaded.get("pre_tokenizer")}
        data["normalizer"] = loaded.get("normalizer")
        check_hash = check_text_hash(tokenizer)
        return detect_pre_tokenizer(data, path=path, check_hash=check_hash).name
    except GGUFKitError as exc:
        log.debug("no pre-tokenizer derived from %s: %s", path, exc)
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        log.debug("the tokenizers library cannot load %s: %s", path, exc)
    return None


def _as_transformers_loads_it(model_dir: Path) -> Any:
    """The backend tokenizer transformers runs, where tokenizer_config.json names a family
    class: transformers 5 may rebuild its pre-tokenizer and normaliser (Qwen2's, Qwen3.5's
    regex) whatever tokenizer.json says, and upstream's converter reads the tokenizer that way
    too. None for the generic classes, which run tokenizer.json as written."""
    from ggufkit.core.fsutil import read_json

    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        config = read_json(config_file, GGUFFormatError)
        name = config.get("tokenizer_class") if isinstance(config, dict) else None
        if not name or name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    except Exception as exc:  # transformers raises many kinds: then tokenizer.json as written
        log.debug("transformers cannot load the tokenizer of %s: %s", model_dir, exc)
        return None


def _hparam_answers(model_dir: Path) -> dict[str, Any]:
    """Config fields ggufkit gives upstream (``arch_answers``): transformers' values it lacks
    (``hparams``), fields in the names upstream reads (``hparams_renamed``), tensor names in
    the names upstream maps (``tensor_renames``) and layouts it gets wrong (``tensor_layouts``), converter patches (``converter_patches``),
    and whether a tokenizer.json without tokenizer.model is read as BPE
    (``bpe_without_sentencepiece``)."""
    from ggufkit.convert.arch_answers import (
        bpe_without_sentencepiece,
        converter_patches,
        hparam_answers,
        hparam_renames,
        tensor_layouts,
        tensor_renames,
    )
    from ggufkit.formats.hfconfig import load_config

    config = load_config(model_dir)  # checked and bounded like every config read
    return {
        "hparams": hparam_answers(config),
        "hparams_renamed": hparam_renames(config),
        "tensor_renames": tensor_renames(config),
        "tensor_layouts": tensor_layouts(config),
        "converter_patches": converter_patches(config),
        "bpe_without_sentencepiece": bpe_without_sentencepiece(config),
    }


def run_upstream(
    model_dir: Path,
    out_file: Path,
    *,
    outtype: str,
    expected_bytes: int,
    chat: ChatTemplateChoice | None = None,
    phases: dict[str, float] | None = None,
    extra_args: Sequence[str] = (),
    extra_kv: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> list[str]:
    """Run the upstream converter writing ``out_file``; returns notes for the result.

    A progress bar follows the file's size. ``phases["upstream"]`` receives the child's lifetime
    (the rest of a conversion's time is ggufkit's own). ``extra_args`` go to the converter
    (``--mmproj``, ``--no-mtp``); ``extra_kv`` are keys (strings or lists of strings) added to
    the file's header.
    """
    _check_torch()
    source = _source()
    notes = [chat.note()] if chat is not None else []
    flags = flags or {}
    notes += [f"answered {flag}: {why}" for flag, why in flags.items()]
    with tempfile.TemporaryDirectory(prefix="ggufkit-upstream-") as tmp:
        # The derived pre-tokenizer is worked out only if the child asks (upstream does not
        # know the tokenizer's hash): most conversions never need it.
        answer_file = Path(tmp) / "pre_tokenizer.txt"
        settings: dict[str, Any] = {
            "source": str(source),
            "pre_tokenizer_file": str(answer_file),
            **_hparam_answers(model_dir),
            "extra_kv": extra_kv or {},
        }
        if chat is not None:
            settings |= child_settings(chat)
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        args = [
            sys.executable,
            str(Path(__file__).with_name("_upstream_child.py")),
            str(settings_file),
            str(model_dir),
            "--outfile",
            str(out_file),
            "--outtype",
            outtype,
            *extra_args,
            *(flag for flag in flags if flag not in extra_args),
        ]
        seconds = _run(args, model_dir, out_file, expected_bytes, notes, source, answer_file)
    if phases is not None:
        phases["upstream"] = seconds
    return notes


def answer_pre_tokenizer(model_dir: Path, answer_file: Path) -> None:
    """Write the derived pre-tokenizer name ("" for none) where the waiting child reads it."""
    partial = answer_file.with_suffix(".partial")
    runtime = answer_file.with_name(RUNTIME_TOKENIZER)
    partial.write_text(derived_pre_tokenizer(model_dir, runtime) or "", encoding="utf-8")
    os.replace(partial, answer_file)


def _run(
    args: list[str],
    model_dir: Path,
    out_file: Path,
    expected_bytes: int,
    notes: list[str],
    source: Path,
    answer_file: Path,
) -> float:
    """Run the child; returns its lifetime (spawn to reap) in seconds."""
    # PYTHONPATH comes before site-packages, so the pinned gguf-py wins over the PyPI one.
    env = {"PYTHONPATH": str(source / "gguf-py")}
    done = threading.Event()

    def on_line(line: str) -> None:
        if line.strip() == NEED_PRE_TOKENIZER:
            answer_pre_tokenizer(model_dir, answer_file)
        elif line.startswith("ggufkit: "):  # the child's own remarks
            notes.append(line.removeprefix("ggufkit: ").strip())

    with progress(expected_bytes or None, f"converting {model_dir.name} (upstream)") as bar:

        def follow() -> None:
            while not done.wait(0.5):
                try:
                    size = out_file.stat().st_size
                except OSError:
                    continue
                bar.n = min(size, expected_bytes) if expected_bytes else size
                bar.refresh()

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        try:
            return run_tool(
                args,
                what=f"the upstream converter ({SCRIPT})",
                env=env,
                merge_stderr=True,
                on_line=on_line,
                hint="see the log; this architecture may need a newer llama.cpp than the pinned one",
            ).seconds
        except ToolFailedError:
            out_file.unlink(missing_ok=True)
            raise
        finally:
            done.set()
            watcher.join()


def convert_upstream(
    info: SourceInfo,
    out: Path,
    outtype: str,
    chat: ChatTemplateChoice,
    phases: dict[str, float] | None = None,
) -> EngineResult:
    """Convert with the pinned converter into ``out`` (atomically); a delta or LoRA adapter in
    ``info`` is merged first (``ggufkit.convert.upstream_source``)."""
    from ggufkit.convert.upstream_source import upstream_source

    with upstream_source(info, out) as source:
        return _convert_dir(source, out, outtype, chat, phases)


def _convert_dir(
    source: UpstreamSource,
    out: Path,
    outtype: str,
    chat: ChatTemplateChoice,
    phases: dict[str, float] | None,
) -> EngineResult:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from ggufkit.convert.arch_answers import (
        layer_count_keys,
        llama_cpp_assumptions,
        upstream_flags,
    )
    from ggufkit.formats.hfconfig import check_layers_for_upstream, load_config
    from ggufkit.formats.safetensors import Checkpoint

    model_dir = source.model_dir
    # the 2-D weights' (block, bytes per block) in ``outtype``: the output's size, roughly
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[outtype.upper()]]
    with Checkpoint.open(model_dir) as checkpoint:
        config = load_config(model_dir)
        check_layers_for_upstream(model_dir, checkpoint.names(), layer_count_keys(config))
        flags = upstream_flags(config, checkpoint.names())
        infos = checkpoint.infos()
        source_bytes = sum(i.n_bytes for i in infos)
        expected = sum(i.n_elements * type_size // block for i in infos)
    check_free_disk(out, expected)
    with atomic_output(out) as partial:
        notes = run_upstream(
            model_dir,
            partial,
            outtype=outtype,
            expected_bytes=expected,
            chat=chat,
            phases=phases,
            flags=flags,
            extra_kv=source.kv,
        )
        gguf_arch, n_tensors = written_arch_and_count(partial)
        source.finish(partial)
    notes.insert(0, "converted by the pinned upstream convert_hf_to_gguf.py")
    for warning in llama_cpp_assumptions(config):
        log.warning("%s", warning)
        notes.append(f"warning: {warning}")
    return EngineResult(n_tensors, out.stat().st_size, source_bytes, gguf_arch, notes)


_GGUF_STRING = 8


def written_arch_and_count(path: Path) -> tuple[str, int]:
    """The architecture and tensor count of the file the child wrote, from its first bytes:
    the tensor count is in the fixed header and upstream writes ``general.architecture`` first.
    Any other first key: the header is read whole (metadata arrays walked, not decoded)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", head)
        (key_len,) = struct.unpack_from("<Q", head, 24)
        key = head[32 : 32 + key_len]
        (kind,) = struct.unpack_from("<I", head, 32 + key_len)
        first_is_arch = key == b"general.architecture" and kind == _GGUF_STRING
        if magic == b"GGUF" and version in (2, 3) and n_kv and first_is_arch:
            (size,) = struct.unpack_from("<Q", head, 36 + key_len)
            value = head[44 + key_len : 44 + key_len + size]
            if len(value) == size:
                return value.decode("utf-8"), int(n_tensors)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        log.debug("reading the whole header of %s: %s", path, exc)
    from ggufkit.formats.gguf_reader import check_gguf

    try:
        info = check_gguf(path)
        return str(info.metadata["general.architecture"]), len(info.tensors)
    except (GGUFFormatError, KeyError) as exc:
        raise InputError(f"the upstream converter wrote an unreadable file: {exc}") from exc
