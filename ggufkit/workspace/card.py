"""The model card (the repo's ``README.md``) for a workspace's files, from what its manifest
recorded: metadata through ``huggingface_hub.ModelCardData``, the measured table, the provenance,
and ready-to-paste usage with the real file names. Nothing here reads a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ggufkit import __version__
from ggufkit.core.errors import WorkspaceError
from ggufkit.core.fsutil import human_bytes
from ggufkit.core.log import get_logger
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.hub import hub_settings, looks_like_repo_id
from ggufkit.workspace.card_pick import Artefact
from ggufkit.workspace.manifest import Manifest, describe_output
from ggufkit.workspace.publish_extras import (  # noqa: F401  (CHAT_NAME_KEY, modelfile: here too)
    CHAT_NAME_KEY,
    modelfile,
    modelfile_text,
)
from ggufkit.workspace.steps import Workspace

log = get_logger("workspace.card")


def published_artefacts(workspace: Workspace) -> list[Artefact]:
    """Every model file the workspace made (convert, then quantize), as its manifest has them."""
    manifest = Manifest.load(workspace.manifest_path)
    found = []
    for key, record in manifest.artefacts.items():
        if record.get("step") not in ("convert", "quantize") or not key.endswith(".gguf"):
            continue
        path = workspace.manifest_path.parent / key
        if not path.is_file():
            log.warning("%s is recorded but missing; left out", key)
            continue
        if describe_output(path)["sha256"] != record.get("sha256"):
            raise WorkspaceError(
                f"{key} changed since it was made: its record (and numbers) describe other bytes",
                hint="rebuild it (`ggufkit convert --force` / `ggufkit quantize --force`)",
            )
        options = record.get("options") or {}
        kind = options.get("type") or options.get("outtype") or "?"
        found.append(Artefact(path, str(kind).upper(), record))
    if not found:
        raise WorkspaceError(
            f"nothing to publish in {workspace.outdir}",
            hint="run `ggufkit convert && ggufkit quantize && ggufkit eval` first",
        )
    found.sort(key=lambda a: (a.record.get("step") != "convert", -int(a.record.get("size") or 0)))
    return found


def build_card(
    workspace: Workspace,
    repo_id: str,
    artefacts: list[Artefact],
    *,
    base_model: str | None = None,
    token: str | None = None,
    plot: str | None = None,
) -> str:
    """The card's text; ``base_model`` names the source repo when the source is a local folder;
    ``token`` reads a private Hub source's card data; ``plot`` is the eval plot's name in the
    repo."""
    from huggingface_hub import ModelCard, ModelCardData

    from ggufkit.workspace.card_pick import pick_section, recommended
    from ggufkit.workspace.card_vision import pictures_section, projector_line
    from ggufkit.workspace.vision_step import published_mmproj

    config = workspace.config
    projector = published_mmproj(workspace)  # a vision-language model's mmproj, else None
    info = read_gguf(artefacts[0].path, max_array_items=0)
    family = info.architecture or "unknown"
    bases = [b for b in (base_model or _hub_id(config.source), _hub_id(config.delta_base)) if b]
    license_id = _source_license(workspace, token)
    data = ModelCardData(
        base_model=bases or None,
        base_model_relation="quantized" if bases else None,
        tags=["gguf", "llama-cpp", family, *(["multimodal"] if projector else [])],
        pipeline_tag="image-text-to-text" if projector else None,
        license=license_id,
        model_name=config.name,
    )
    picture = (
        f"![ΔPPL, KL-divergence and speed of each file against its size]({plot})" if plot else ""
    )
    sections = [
        f"# {config.name} GGUF",
        f"GGUF files of {_source_text(workspace, bases)} for llama.cpp, made and measured "
        f"with ggufkit {__version__}.",
        *missing_metadata(bases, license_id),
        measured_table(artefacts),
        projector_line(projector) if projector else "",
        picture,
        pick_section(artefacts),
        provenance(workspace, artefacts, projector),
        usage(repo_id, artefacts, recommended(artefacts)),
        pictures_section(repo_id, _pick(artefacts), projector) if projector else "",
    ]
    sections = [section for section in sections if section]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return str(card)


def missing_metadata(bases: list[str], license_id: str | None) -> list[str]:
    """Warnings, on the card and in the log, for metadata the Hub and users rely on."""
    found = []
    if not bases:
        found.append(
            "no `base_model`: the Hub will not link these files to their source model; "
            "publish with `--base-model REPO_ID`"
        )
    if not license_id:
        found.append(
            "no license: none was found in the source's card; state the source model's "
            "license here before others use these files"
        )
    for text in found:
        log.warning("the card has %s", text.replace("`", ""))
    return [f"> [!WARNING]\n> This card has {text}." for text in found]


def _hub_id(ref: str | None) -> str | None:
    return ref if ref and looks_like_repo_id(ref) and not Path(ref).exists() else None


def _source_text(workspace: Workspace, bases: list[str]) -> str:
    local = Path(workspace.config.source).name  # never the user's own path
    return f"`{bases[0]}`" if bases else f"the local checkpoint `{local}`"


def _source_license(workspace: Workspace, token: str | None) -> str | None:
    """The source card's ``license``: from its README.md when on disk (a local folder), else
    from the Hub's card data for a Hub source (downloads fetch no README)."""
    from huggingface_hub import HfApi, ModelCard

    model = workspace.cached(workspace.config.source, workspace.config.revision)
    readme = model.path / "README.md" if model is not None else None
    try:
        if readme is not None and readme.is_file():
            value = ModelCard.load(readme).data.license
        elif model is not None and model.repo_id is not None:
            api = HfApi(endpoint=hub_settings().endpoint, token=token)
            info = api.model_info(model.repo_id, revision=model.commit or model.revision)
            value = info.card_data.license if info.card_data is not None else None
        else:
            return None
    except Exception as exc:  # a missing or malformed source card must not stop the publish
        log.warning(
            "the source's license is unknown (%s); the card states none", type(exc).__name__
        )
        return None
    return value if isinstance(value, str) else None


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def _pm(e: dict[str, Any], key: str, ci: str, err: str, fmt: str) -> str:
    """A value ± the half-width of its 95 % interval (whichever the eval's mode recorded);
    the value alone when there is none."""
    from ggufkit.evaluate.results import normal_half

    value = e.get(key)
    if not isinstance(value, (int, float)):
        return "–"
    half = e.get(ci)
    if not isinstance(half, (int, float)):
        half = normal_half(e[err]) if isinstance(e.get(err), (int, float)) else None
    if fmt == "kld":  # near-lossless files have KLDs of 1e-5: keep their digits
        fmt = ".5f" if value >= 1e-3 else ".2e"
    return format(value, fmt) + (f" ± {format(half, fmt.lstrip('+'))}" if half is not None else "")


def _speed(e: dict[str, Any], key: str) -> str:
    value, std = e.get(key), e.get(f"{key}_std")
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.1f}" + (f" ± {std:.1f}" if isinstance(std, (int, float)) else "")


def measured_table(artefacts: list[Artefact]) -> str:
    """One row per file: size, bits per weight, perplexity, ΔPPL and KLD against f16 (± a 95 %
    interval), tokens/s (± the spread over runs), and the tensors' real types (read from the
    file), with a note where a mix fell back."""
    from ggufkit.quantize.types import read_tensor_mix

    rows = [
        "## Measured",
        "| file | type | size | bits/weight | perplexity | ΔPPL vs f16 | KLD vs f16 "
        "| prompt tok/s | gen tok/s | tensors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    contexts = []
    notes = []
    for a in artefacts:
        mix = read_tensor_mix(a.path)
        if mix.note():
            notes.append(f"`{a.path.name}`: {mix.note()} (llama.cpp's fallback).")
        e = a.eval
        ppl = _pm(e, "ppl", "ppl_ci", "ppl_err", ".4f")
        if e.get("is_baseline"):
            delta = kld = "baseline"
        else:
            delta = _pm(e, "delta_ppl", "delta_ppl_ci", "delta_ppl_err", "+.4f")
            kld = _pm(e, "kld_mean", "kld_ci", "kld_err", "kld")
        bpw = e.get("bpw") or (a.record.get("result") or {}).get("bits_per_weight")
        rows.append(
            f"| `{a.path.name}` | {a.type} | {human_bytes(int(a.record.get('size') or 0))} | "
            f"{_num(bpw, '.2f')} | {ppl} | {delta} | {kld} | {_speed(e, 'pp_tps')} | "
            f"{_speed(e, 'tg_tps')} | {mix.counts_text()} |"
        )
        if e:
            contexts.append(e)
    if notes:
        rows.append("\n" + "\n".join(notes))
    if contexts:
        c = contexts[0]
        rows.append(
            f"\nPerplexity over `{Path(str(c.get('corpus', '?'))).name}` (sha256 "
            f"`{c.get('corpus_sha256', '?')}`), context {c.get('ctx', '?')}, "
            f"{c.get('chunks', '?')} chunks; lower is better for perplexity, ΔPPL and KLD. "
            "± on those: the half-width of a 95 % interval, ΔPPL and KLD paired with the f16 "
            "file on the same tokens; ± on tok/s: the standard deviation over the benchmark's "
            "runs. KLD is the mean per token against "
            f"`{c.get('baseline') or 'the f16 file'}`. Measured on {c.get('machine', 'an unnamed machine')}"
            f"{', ' + str(c['threads']) + ' threads' if c.get('threads') else ''} with llama.cpp "
            f"`{c.get('llama_cpp_commit', '?')}`, {c.get('measured', '')}."
        )
    else:
        rows.append("\nNot measured yet: run `ggufkit eval` in the workspace before publishing.")
    return "\n".join(rows)


def provenance(
    workspace: Workspace, artefacts: list[Artefact], projector: Artefact | None = None
) -> str:
    convert = next((a.record for a in artefacts if a.record.get("step") == "convert"), {})
    env = convert.get("environment") or artefacts[0].record.get("environment") or {}
    lines = ["## Provenance"]
    for item in convert.get("inputs") or []:
        role = item.get("role", "model")
        if item.get("kind") == "hub":
            lines.append(f"- {role}: `{item.get('repo_id')}` at revision `{item.get('commit')}`")
        else:
            lines.append(f"- {role}: local checkpoint `{Path(str(item.get('path'))).name}`")
        for name, sha in sorted((item.get("files") or {}).items()):
            lines.append(f"  - `{name}` sha256 `{sha}`")
    if projector is not None:  # a vision-language model's mmproj, converted with the model
        from ggufkit.workspace.card_vision import provenance_lines

        lines += provenance_lines(projector)
    lines.append(f"- llama.cpp commit: `{env.get('llama_cpp_commit') or '?'}`")
    lines.append(f"- ggufkit version: `{env.get('ggufkit') or __version__}`")
    imatrix = [
        i.get("sha256")
        for a in artefacts
        for i in a.record.get("inputs") or []
        if i.get("role") == "imatrix"
    ]
    corpus = (artefacts[0].record.get("result") or {}).get("corpus_sha256")
    if imatrix:
        lines.append(f"- importance matrix sha256: `{imatrix[0]}`")
        lines.append(f"- imatrix corpus sha256: `{corpus or 'not recorded'}`")
    else:
        lines.append("- imatrix corpus sha256: none (no importance matrix was used)")
    return "\n".join(lines)


def _pick(artefacts: list[Artefact]) -> Artefact:
    """The file the usage shows: the recommended one, else the first quantized one."""
    from ggufkit.workspace.card_pick import recommended

    found = recommended(artefacts)
    return found or next((a for a in artefacts if a.record.get("step") == "quantize"), artefacts[0])


def usage(
    repo_id: str,
    artefacts: list[Artefact],
    pick: Artefact | None = None,
) -> str:
    """``llama-cli -hf``, ``ollama run hf.co/…``, llama-cpp-python and the Modelfile, with the
    recommended file (else the first quantized one) and its real name."""
    pick = pick or _pick(artefacts)
    name = pick.path.name
    tag = f"{repo_id}:{pick.type}"
    text = [
        "## Usage",
        f"With llama.cpp, straight from the Hub (`:{pick.type}` picks `{name}`):",
        f'```sh\nllama-cli -hf {tag} -p "Hello"\n```',
        "With Ollama, straight from the Hub:",
        f"```sh\nollama run hf.co/{tag}\n```",
        "Or download the file first (a split set is opened from its first file):",
        f"```sh\nhf download {repo_id} --include '{_glob(name)}' --local-dir .\n"
        f'llama-cli -m {name} -p "Hello"\n```',
        "With llama-cpp-python:",
        "```python\nfrom llama_cpp import Llama\n\n"
        f'llm = Llama.from_pretrained(repo_id="{repo_id}", filename="{name}")\n'
        'print(llm("Hello", max_tokens=32)["choices"][0]["text"])\n```',
        "With Ollama from the downloaded file: the repo's `Modelfile`, then "
        "`ollama create NAME -f Modelfile`:",
        "```\n" + modelfile_text(pick.path) + "```",
    ]
    return "\n\n".join(text)


def _glob(name: str) -> str:
    """A first shard's name as a glob for its whole set."""
    if "-00001-of-" in name:
        return name.split("-00001-of-")[0] + "-*-of-*.gguf"
    return name
