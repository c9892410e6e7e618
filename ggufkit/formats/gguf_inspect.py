"""What ``ggufkit inspect`` shows of a GGUF (:class:`GGUFInfo`): a text summary or its JSON."""

from __future__ import annotations

from typing import Any

from ggufkit.core.fsutil import human_bytes
from ggufkit.core.text import markdown_table, printable
from ggufkit.formats.ggufinfo import ArraySummary, GGUFInfo

MISSING = "—"


def inspect_text(info: GGUFInfo, *, tensors: bool = False) -> str:
    """What ``ggufkit inspect`` prints: header, summary, metadata (long arrays summarised)."""
    bpw = info.bits_per_weight
    types = ", ".join(f"{name} ×{count}" for name, count in info.tensor_types.most_common())
    lines = [
        f"file:          {info.path}",
        f"size:          {human_bytes(info.file_size)} ({info.file_size:,} bytes)",
        f"GGUF:          version {info.version}, {info.byte_order}-endian, "
        f"alignment {info.alignment}, data at byte {info.data_offset:,}",
        f"architecture:  {info.architecture or MISSING}",
        f"file type:     {info.file_type_name or MISSING}",
        f"parameters:    {info.parameter_count:,}",
        f"bits/weight:   {MISSING if bpw is None else f'{bpw:.2f}'}",
        f"tensors:       {len(info.tensors)} ({types or 'none'})",
        f"metadata:      {len(info.metadata)} keys",
    ]
    for key, value in info.summarized_metadata().items():
        kind = info.metadata_types.get(key, "")
        lines.append(f"  {key} ({kind}) = {_value_text(value)}")
    if tensors:
        header = ["name", "type", "shape", "bytes"]
        rows = [
            [
                t.name,
                t.type_name,
                "×".join(str(d) for d in t.shape),
                f"{t.n_bytes:,}" if t.n_bytes is not None else MISSING,
            ]
            for t in info.tensors
        ]
        return "\n".join([*map(printable, lines), "", markdown_table(header, rows, "llrr")])
    return "\n".join(map(printable, lines))


def inspect_json(info: GGUFInfo, *, tensors: bool = False) -> dict[str, Any]:
    data = info.to_json()
    data["tensor_count"] = len(info.tensors)
    data["file_size_human"] = human_bytes(info.file_size)
    if not tensors:
        data.pop("tensors", None)
    return data


def _value_text(value: Any, width: int = 100) -> str:
    if isinstance(value, ArraySummary):
        head = ", ".join(repr(v) for v in value.head)
        more = ", …" if value.length > len(value.head) else ""
        return f"[{value.item_type} × {value.length}: {head}{more}]"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= width else text[: width - 1] + "…'"
    if isinstance(value, list):
        return repr(value)
    return str(value)
