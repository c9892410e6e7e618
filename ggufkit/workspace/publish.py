"""``ggufkit publish``: every model file a workspace made, and its generated card, to a Hub repo."""

from __future__ import annotations

from dataclasses import dataclass

from ggufkit.hub.upload import UploadPlan, UploadResult, plan_upload, upload
from ggufkit.workspace.card import build_card, published_artefacts
from ggufkit.workspace.steps import Workspace


@dataclass
class Publication:
    plan: UploadPlan
    result: UploadResult


def publish(
    workspace: Workspace,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    private: bool = False,
    base_model: str | None = None,
    dry_run: bool = False,
) -> Publication:
    """Upload the workspace's converted and quantized files (split sets whole) with a card that
    carries the measured table; a re-run sends only what changed."""
    with workspace.lock():
        artefacts = published_artefacts(workspace)
        card = build_card(workspace, repo_id, artefacts, base_model=base_model, token=token)
        plan = plan_upload(
            repo_id, [a.path for a in artefacts], card=card, revision=revision, private=private
        )
        result = upload(
            plan,
            token=token,
            message=f"Publish {workspace.config.name} GGUF files",
            dry_run=dry_run,
        )
    return Publication(plan, result)
