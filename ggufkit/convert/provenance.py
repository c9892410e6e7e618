"""What a converted file records about where it came from: ``general.*`` and ``ggufkit.*`` keys.

The source files and their sha256s come from :mod:`ggufkit.formats.origin`; the header is written
with placeholders of the same length and patched when the hashes are done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def add_provenance(
    writer: gguf.GGUFWriter,
    info: SourceInfo,
    origin: SourceOrigin,
    *,
    engine: str,
) -> None:
    writer.add_string("ggufkit.version", __version__)
    writer.add_string("ggufkit.engine", engine)
    if info.repo_id:
        writer.add_string("ggufkit.source.repo_id", info.repo_id)
    if info.revision:
        writer.add_string("ggufkit.source.revision", info.revision)
    if origin.delta_base is not None:
        writer.add_string("ggufkit.source.delta_base", origin.delta_base)
    if origin.lora is not None:
        writer.add_string("ggufkit.source.lora", origin.lora)
    if origin.labels:
        writer.add_array("ggufkit.source.files", origin.labels)
        writer.add_array("ggufkit.source.sha256", origin.hashes)
