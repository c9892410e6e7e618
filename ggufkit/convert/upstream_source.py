"""What the upstream converter reads, and what its output records about it.

The pinned converter reads one checkpoint directory. A delta (``convert --delta-base``) or a LoRA
adapter (``convert --lora``) on an architecture ggufkit does not convert natively is therefore
merged first, streamed by ``ggufkit.delta`` into a temporary directory beside the output (the
same file system, removed afterwards), and that directory is converted; its merge record names the
base, the delta or adapter and their sha256s. The child writes the ``ggufkit.*`` provenance keys
with placeholder sha256s while the parent hashes the sources in the background; the finished
hashes are patched into the header before the output gets its final name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.convert.provenance import patch_source_hashes, provenance_kv
from ggufkit.core.log import get_logger
from ggufkit.formats.origin import SourceInfo, SourceOrigin

log = get_logger("convert.upstream")


@dataclass
class UpstreamSource:
    model_dir: Path  # the directory the converter reads
    kv: dict[str, Any]  # the provenance keys the child writes
    origin: SourceOrigin

    def finish(self, written: Path) -> None:
        """Patch the finished sha256s into a file the child wrote (before its rename)."""
        if self.origin.labels:
            patch_source_hashes(written, self.origin.result())


@contextmanager
def upstream_source(info: SourceInfo, out: Path) -> Iterator[UpstreamSource]:
    with ExitStack() as stack:
        model_dir = info.model_dir
        if info.delta_base is not None or info.lora is not None:
            model_dir = _merge_first(info, out, stack)
        origin = SourceOrigin.of(SourceInfo(model_dir))  # merged: read from its merge record
        stack.callback(origin.cancel)
        yield UpstreamSource(model_dir, provenance_kv(info, origin, engine="upstream"), origin)


def _merge_first(info: SourceInfo, out: Path, stack: ExitStack) -> Path:
    from ggufkit.core.partials import owned_temp_dir
    from ggufkit.delta import merge_delta, merge_lora

    out.parent.mkdir(parents=True, exist_ok=True)  # as atomic_output would
    # a run killed mid-merge leaves a model-sized folder: the next one removes it
    scratch = stack.enter_context(owned_temp_dir(".ggufkit-merge-", out.parent))
    merged = scratch / info.model_dir.name  # the converter names the model after its directory
    if info.lora is not None:
        log.info(
            "merging the adapter %s into %s first (the upstream converter reads one checkpoint)",
            info.lora.name,
            info.model_dir.name,
        )
        merge_lora(info.model_dir, info.lora, merged)
    else:
        assert info.delta_base is not None
        log.info(
            "merging the delta %s onto %s first (the upstream converter reads one checkpoint)",
            info.model_dir.name,
            info.delta_base.name,
        )
        merge_delta(info.delta_base, info.model_dir, merged)
    return merged
