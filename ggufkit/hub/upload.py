"""``ggufkit upload``: files (split sets whole) and a model card to a Hub repo, in one commit.

Uploads go through ``huggingface_hub``'s commit path: the repo is created when missing (private
or public), a branch when ``revision`` names a new one, and every large file goes to the large
file store before the commit refers to it. Blobs the store already holds are not sent again, so
a run that was cut off is finished by the next one, and files whose content the repo already has
are left out of the commit (a re-run with nothing changed uploads nothing). The token is passed
to ``huggingface_hub`` only: never logged, printed, or written anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import GGUFKitError, InputError, UsageError
from ggufkit.core.fsutil import human_bytes
from ggufkit.core.log import get_logger, progress_disabled
from ggufkit.formats.gguf_split import split_set
from ggufkit.hub.errors import translate
from ggufkit.hub.selection import check_repo_id
from ggufkit.hub.settings import hub_settings
from ggufkit.hub.timeouts import install as install_timeouts

log = get_logger("hub.upload")

CARD_NAME = "README.md"


@dataclass(frozen=True)
class UploadFile:
    local: Path
    path_in_repo: str
    size: int


@dataclass
class UploadPlan:
    """What an upload sends: ``files`` (split sets expanded), and the card when there is one."""

    repo_id: str
    files: list[UploadFile]
    card: str | None = None
    revision: str | None = None
    private: bool = False

    @property
    def total_bytes(self) -> int:
        card = len(self.card.encode("utf-8")) if self.card is not None else 0
        return sum(f.size for f in self.files) + card

    def describe(self) -> str:
        """What ``--dry-run`` prints: the files, their sizes and the total."""
        where = f"{self.repo_id}@{self.revision or 'main'}"
        lines = [f"would upload to {where} ({'private' if self.private else 'public'}):"]
        width = max([len(f.path_in_repo) for f in self.files] + [len(CARD_NAME)])
        lines += [f"  {f.path_in_repo:<{width}}  {human_bytes(f.size):>10}" for f in self.files]
        if self.card is not None:
            size = human_bytes(len(self.card.encode("utf-8")))
            lines.append(f"  {CARD_NAME:<{width}}  {size:>10}  (generated model card)")
        lines.append(f"total: {human_bytes(self.total_bytes)} ({self.total_bytes:,} bytes)")
        return "\n".join(lines)


@dataclass
class UploadResult:
    repo_id: str
    revision: str
    commit: str | None  # None for a dry run
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "uploaded": self.uploaded,
            "unchanged": self.unchanged,
            "dry_run": self.dry_run,
        }


def plan_upload(
    repo_id: str,
    files: Sequence[str | Path],
    *,
    card: str | None = None,
    revision: str | None = None,
    private: bool = False,
) -> UploadPlan:
    """Check the repo id and the files; the first shard of a split set brings the whole set."""
    check_repo_id(repo_id)
    chosen: dict[str, UploadFile] = {}
    for given in files:
        path = Path(given)
        if not path.is_file():
            raise InputError(f"{path} is not a file", hint="give the files to upload", path=path)
        for local in split_set(path) if path.name.endswith(".gguf") else [path]:
            name = local.name
            if name == CARD_NAME and card is not None:
                raise UsageError(
                    f"{local} would replace the generated model card",
                    hint="leave it out, or upload without a generated card",
                )
            earlier = chosen.get(name)
            if earlier is not None and earlier.local.resolve() != local.resolve():
                raise UsageError(
                    f"two files are named {name} ({earlier.local} and {local})",
                    hint="the repo is flat: rename one of them",
                )
            chosen[name] = UploadFile(local, name, local.stat().st_size)
    if not chosen and card is None:
        raise UsageError("nothing to upload", hint="give the .gguf files to upload")
    return UploadPlan(repo_id, list(chosen.values()), card, revision, private)


def upload(
    plan: UploadPlan,
    *,
    token: str | None = None,
    message: str = "Upload GGUF files with ggufkit",
    dry_run: bool = False,
) -> UploadResult:
    """Send ``plan`` to the Hub (nothing with ``dry_run``); returns what was sent and what the
    repo already had."""
    revision = plan.revision or "main"
    if dry_run:
        names = [f.path_in_repo for f in plan.files] + ([CARD_NAME] if plan.card else [])
        return UploadResult(plan.repo_id, revision, None, uploaded=names, dry_run=True)
    if token is not None and not token.strip():
        raise UsageError("the access token is empty", hint="pass a token, or leave --token out")
    from huggingface_hub import CommitOperationAdd, HfApi

    if progress_disabled():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    install_timeouts()
    api = HfApi(endpoint=hub_settings().endpoint, token=token)
    operations = [CommitOperationAdd(f.path_in_repo, str(f.local)) for f in plan.files]
    if plan.card is not None:
        operations.append(CommitOperationAdd(CARD_NAME, plan.card.encode("utf-8")))
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
        if revision != "main":
            api.create_branch(plan.repo_id, branch=revision, exist_ok=True)
        log.info("uploading %s to %s@%s", human_bytes(plan.total_bytes), plan.repo_id, revision)
        info = api.create_commit(
            plan.repo_id, operations=operations, commit_message=message, revision=revision
        )
    except GGUFKitError:
        raise
    except Exception as exc:
        raise translate(exc, plan.repo_id, revision, token, hub_settings(), upload=True) from exc
    # huggingface_hub marks each addition with the oid the repo already had for that path.
    unchanged = [
        op.path_in_repo
        for op in operations
        if op._remote_oid is not None and op._remote_oid == op._local_oid
    ]
    uploaded = [op.path_in_repo for op in operations if op.path_in_repo not in unchanged]
    return UploadResult(plan.repo_id, revision, info.oid, uploaded, unchanged)
