"""Fetch, verify and unpack the pinned llama.cpp source carried by the llama-cpp-python sdist."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core import paths
from ggufkit.core.errors import ChecksumError, InputError, ToolFailedError
from ggufkit.core.fsutil import atomic_dir, locked, sha256_file
from ggufkit.core.log import get_logger
from ggufkit.llamacpp import patches

log = get_logger("llamacpp.source")

LOCK_FILE = Path(__file__).with_name("llama.cpp.lock")


@dataclass(frozen=True)
class SourcePin:
    package: str
    version: str
    sha256: str
    subdir: str
    llama_cpp_commit: str

    @property
    def sdist_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


def read_pin(lock_file: Path = LOCK_FILE) -> SourcePin:
    try:
        data = tomllib.loads(lock_file.read_text(encoding="utf-8"))["source"]
        return SourcePin(**{key: str(data[key]) for key in SourcePin.__dataclass_fields__})
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(
            f"the llama.cpp lock file {lock_file} is unreadable: {exc}",
            hint="restore it from the repository (git checkout -- ggufkit/llamacpp/llama.cpp.lock)",
        ) from exc


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path.name} has sha256 {actual}, but the pin says {expected}",
            hint=f"delete {path} and run `ggufkit build` again to fetch it anew",
            path=path,
        )


def fetch_sdist(pin: SourcePin, dest_dir: Path | None = None) -> Path:
    """The verified sdist in the download cache, fetched with `pip download` when absent."""
    dest_dir = dest_dir or paths.downloads_dir()
    target = dest_dir / pin.sdist_name
    if target.is_file():
        verify_sha256(target, pin.sha256)
        return target
    log.info("fetching %s==%s (the pinned llama.cpp source) with pip", pin.package, pin.version)
    staging = dest_dir / f".pip-download-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            str(staging),
            f"{pin.package}=={pin.version}",
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, errors="replace", check=False
        )
        fetched = staging / pin.sdist_name
        if result.returncode != 0 or not fetched.is_file():
            raise ToolFailedError(
                f"pip could not download {pin.package}=={pin.version}",
                hint="check that the package index is reachable (pip config), then retry",
                tail="\n".join((result.stderr or result.stdout).strip().splitlines()[-8:]),
            )
        verify_sha256(fetched, pin.sha256)
        os.replace(fetched, target)
    finally:
        import shutil  # here: shutil loads bz2 and lzma, which reading the pin does not need

        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_source_dir(pin: SourcePin) -> Path:
    """`vendor/llama.cpp` in a source checkout (git-ignored), else under GGUFKIT_HOME."""
    override = os.environ.get("GGUFKIT_LLAMA_CPP_SRC")
    if override:
        return Path(override)
    root = paths.project_root()
    if root is not None:
        return root / "vendor" / "llama.cpp"
    return paths.home() / "src" / f"llama.cpp-{pin.llama_cpp_commit}"


STAMP = ".ggufkit-source"


def source_stamp(pin: SourcePin, patches_digest: str) -> str:
    """What the unpacked tree is: the sdist it came from and the patches applied to it."""
    return f"{pin.sha256} patches={patches_digest}"


def source_is_current(source_dir: Path, pin: SourcePin) -> bool:
    stamp = source_dir / STAMP
    expected = source_stamp(pin, patches.patches_digest())
    return stamp.is_file() and stamp.read_text().strip() == expected


def ensure_source(pin: SourcePin | None = None, source_dir: Path | None = None) -> Path:
    """Unpack the pinned source once and apply ggufkit's patches; the stamp says what it holds."""
    pin = pin or read_pin()
    source_dir = source_dir or default_source_dir(pin)
    if source_is_current(source_dir, pin):
        return source_dir
    with locked(source_dir.with_name(source_dir.name + ".lock"), what="the llama.cpp source"):
        if source_is_current(source_dir, pin):
            return source_dir
        sdist = fetch_sdist(pin)
        patch_list = patches.patch_files()
        log.info(
            "unpacking llama.cpp %s into %s (%d ggufkit patches)",
            pin.llama_cpp_commit,
            source_dir,
            len(patch_list),
        )
        unpack_subdir(sdist, pin.subdir, source_dir, patch_list)
        stamp = source_stamp(pin, patches.patches_digest(patch_list))
        (source_dir / STAMP).write_text(stamp + "\n")
    return source_dir


def unpack_subdir(
    sdist: Path, subdir: str, dest: Path, patch_list: list[Path] | None = None
) -> None:
    """Extract ``<top>/<subdir>/**`` of the sdist into ``dest`` atomically, refusing unsafe members,
    then apply ``patch_list`` there: a half-patched tree never appears under ``dest``."""
    import shutil
    import tarfile  # only to unpack: a quantize reads the pin, never the archive

    with tarfile.open(sdist, "r:gz") as archive, atomic_dir(dest) as staging:
        prefix: str | None = None
        count = 0
        for member in archive:
            parts = member.name.split("/", 1)
            if len(parts) < 2:
                continue
            inner = parts[1]
            prefix = prefix or parts[0]
            if not (inner == subdir or inner.startswith(subdir + "/")):
                continue
            relative = inner[len(subdir) :].lstrip("/")
            if not relative or not (member.isfile() or member.isdir()):
                continue
            target = (staging / relative).resolve()
            if not str(target).startswith(str(staging.resolve())):
                raise InputError(f"unsafe path in {sdist.name}: {member.name}", path=sdist)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            extracted = archive.extractfile(member)
            if extracted is None:
                continue
            with extracted, open(target, "wb") as out:
                shutil.copyfileobj(extracted, out)
            if member.mode & 0o111:
                target.chmod(0o755)
            count += 1
        if count == 0:
            raise InputError(
                f"{sdist.name} has no {subdir}/",
                hint="the pin in llama.cpp.lock is wrong",
                path=sdist,
            )
        (staging / STAMP).unlink(missing_ok=True)
        patches.apply_all(staging, patch_list or [])
