"""What a converted file records about where it came from: ``general.*`` and ``ggufkit.*`` keys.

The source files and their sha256s come from :mod:`ggufkit.formats.origin`; the header is written
with placeholders of the same length and patched when the hashes are done.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import gguf

from ggufkit import __version__
from ggufkit.formats.origin import SourceInfo, SourceOrigin


def readme_license(model_dir: Path) -> str | None:
    """``license:`` from README.md's YAML front matter (the model card), without a YAML parser."""
    readme = model_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    for line in text[3 : end if end > 0 else len(text)].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def _repo_url(repo_id: str) -> str:
    from ggufkit.hub import hub_settings

    endpoint = hub_settings().endpoint
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return f"{endpoint.rstrip('/')}/{repo_id}"


def add_general_metadata(
    writer: gguf.GGUFWriter, info: SourceInfo, config: dict[str, Any], file_type: int
) -> None:
    writer.add_name(info.repo_id.split("/")[-1] if info.repo_id else info.model_dir.name)
    license_ = config.get("license") or readme_license(info.model_dir)
    if isinstance(license_, str) and license_:
        writer.add_license(license_)
    if info.repo_id:
        writer.add_source_repo_url(_repo_url(info.repo_id))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def provenance_kv(info: SourceInfo, origin: SourceOrigin, *, engine: str) -> dict[str, Any]:
    """The ``ggufkit.*`` keys every engine writes: version, engine, source and its sha256s
    (placeholders of the same length while the hashes are pending)."""
    kv: dict[str, Any] = {"ggufkit.version": __version__, "ggufkit.engine": engine}
    if info.repo_id:
        kv["ggufkit.source.repo_id"] = info.repo_id
    if info.revision:
        kv["ggufkit.source.revision"] = info.revision
    if origin.delta_base is not None:
        kv["ggufkit.source.delta_base"] = origin.delta_base
    if origin.lora is not None:
        kv["ggufkit.source.lora"] = origin.lora
    if origin.labels:
        kv["ggufkit.source.files"] = list(origin.labels)
        kv["ggufkit.source.sha256"] = list(origin.hashes)
    return kv


def add_provenance(
    writer: gguf.GGUFWriter,
    info: SourceInfo,
    origin: SourceOrigin,
    *,
    engine: str,
) -> None:
    for key, value in provenance_kv(info, origin, engine=engine).items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, value)


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
SHA256_KEY = b"ggufkit.source.sha256"


def patch_source_hashes(path: Path, hashes: list[str]) -> None:
    """Write the finished sha256s over the placeholders another writer (the upstream child) put
    in ``path``'s header; each is 64 ASCII characters, so nothing else moves. The header's
    key/value section is walked as written (nothing of the tensors is read)."""
    from ggufkit.core.errors import GGUFFormatError

    try:
        with open(path, "r+b") as handle:
            if _patch(handle, hashes):
                return
        why = f"no {SHA256_KEY.decode()} of {len(hashes)} entries"
    except (ValueError, KeyError, struct.error) as exc:  # a type GGUF lacks, a short header
        why = f"an unreadable header ({exc})"
    raise GGUFFormatError(
        f"the upstream converter wrote {path.name} with {why} to record the sources' sha256s in",
        hint="run the conversion again; report it if it persists",
        path=path,
    )


def _patch(handle: BinaryIO, hashes: list[str]) -> bool:
    magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", handle.read(24))
    if magic != b"GGUF":
        raise ValueError("not a GGUF file")
    for _ in range(n_kv):
        key = handle.read(struct.unpack("<Q", handle.read(8))[0])
        (kind,) = struct.unpack("<I", handle.read(4))
        if key == SHA256_KEY and kind == _ARRAY:
            item, count = struct.unpack("<IQ", handle.read(12))
            if item != _STRING or count != len(hashes):
                return False
            for value in hashes:
                (size,) = struct.unpack("<Q", handle.read(8))
                encoded = value.encode("ascii")
                if size != len(encoded):
                    raise ValueError(f"a sha256 placeholder of {size} bytes")
                handle.write(encoded)  # in place, over the placeholder
            return True
        _skip_value(handle, kind)
    return False


def _skip_value(handle: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        handle.seek(struct.unpack("<Q", handle.read(8))[0], 1)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", handle.read(12))
        if item in _SCALAR_SIZES:
            handle.seek(_SCALAR_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, item)
    else:
        handle.seek(_SCALAR_SIZES[kind], 1)
