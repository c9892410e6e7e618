"""``ggufkit publish``: every model file a workspace made, and its generated card, to a Hub repo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ggufkit.hub.upload import UploadPlan, UploadResult, plan_upload, upload
from ggufkit.workspace.card import Artefact, build_card, published_artefacts
from ggufkit.workspace.card_pick import recommended
from ggufkit.workspace.publish_extras import write_modelfile, write_plot
from ggufkit.workspace.steps import Workspace
from ggufkit.workspace.vision_step import published_mmproj


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
    """Upload the workspace's converted and quantized files (split sets whole), a vision-language
    model's projector beside them, with a card that carries the measured table; a re-run sends
    only what changed."""
    with workspace.lock():
        artefacts = published_artefacts(workspace)
        beside = publish_extras(workspace, repo_id, artefacts)
        plot = next((p.name for p in beside if p.suffix == ".png"), None)
        card = build_card(
            workspace, repo_id, artefacts, base_model=base_model, token=token, plot=plot
        )
        projector = published_mmproj(workspace)  # a vision-language model's, beside the model
        plan = plan_upload(
            repo_id,
            [*(a.path for a in artefacts), *([projector.path] if projector else []), *beside],
            card=card,
            revision=revision,
            private=private,
        )
        result = upload(
            plan,
            token=token,
            message=f"Publish {workspace.config.name} GGUF files",
            dry_run=dry_run,
        )
    return Publication(plan, result)


def publish_extras(workspace: Workspace, repo_id: str, artefacts: list[Artefact]) -> list[Path]:
    """The Modelfile (for the recommended file, else the first quantized one) and the eval plot,
    written beside the model files (a dry run writes them too: they are shown, not sent)."""
    outdir = workspace.manifest_path.parent
    pick = recommended(artefacts) or next(
        (a for a in artefacts if a.record.get("step") == "quantize"), artefacts[0]
    )
    written = [write_modelfile(outdir, pick, workspace.manifest_path, repo_id)]
    plot = write_plot(outdir, workspace.config.name, artefacts)
    return written + ([plot] if plot is not None else [])
