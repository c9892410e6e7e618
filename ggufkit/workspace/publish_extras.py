"""What ``publish`` writes beside the model files and sends with them: an Ollama ``Modelfile``
for the recommended file (its chat template and stop tokens where the file has them) and the
eval plot the card shows; both recorded in the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ggufkit.core.errors import GGUFKitError
from ggufkit.core.fsutil import write_text_atomic
from ggufkit.core.log import get_logger
from ggufkit.evaluate.results import EvalReport, ModelResult
from ggufkit.workspace.manifest import file_input, record_artefact

log = get_logger("workspace.publish")

MODELFILE = "Modelfile"
CHAT_NAME_KEY = "ggufkit.chat_template.name"


def eval_report(artefacts: list[Any]) -> EvalReport | None:
    """The files' recorded eval results as one report (for the plot); None when not measured."""
    measured = [a for a in artefacts if a.eval.get("ppl") is not None]
    if not measured:
        return None
    context = measured[0].eval
    models = [
        ModelResult.from_json({**a.eval, "name": a.type, "path": str(a.path), "type": a.type})
        for a in measured
    ]
    return EvalReport(
        corpus=str(context.get("corpus", "?")),
        corpus_sha256=str(context.get("corpus_sha256", "")),
        corpus_tokens=None,
        ctx=int(context.get("ctx") or 0),
        chunks=int(context.get("chunks") or 0),
        baseline=context.get("baseline"),
        llama_cpp_commit=str(context.get("llama_cpp_commit", "")),
        models=models,
        bench=context.get("bench") or {},
        sequential=context.get("sequential"),
    )


def write_plot(outdir: Path, name: str, artefacts: list[Any]) -> Path | None:
    """``NAME-eval.png`` from the recorded numbers; None when nothing was measured or matplotlib
    is missing (the card then has no picture, and says nothing false)."""
    from ggufkit.evaluate.plots import plot_eval

    report = eval_report(artefacts)
    if report is None:
        return None
    try:
        return plot_eval(report, outdir / f"{name}-eval.png")
    except GGUFKitError as exc:
        log.warning("no plot on the card: %s", exc)
        return None


def stop_tokens(metadata: dict[str, Any]) -> list[str]:
    """The end-of-generation tokens' text (EOS, EOT) where the file names them."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    found = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        index = metadata.get(key)
        if isinstance(tokens, list) and isinstance(index, int) and 0 <= index < len(tokens):
            text = str(tokens[index])
            if text and text not in found and '"' not in text:
                found.append(text)
    return found


def modelfile_text(path: Path) -> str:
    """The Modelfile for the GGUF at ``path``: its FastChat prompt, else a note that Ollama reads
    the file's own chat template; and its end-of-generation tokens as stops."""
    from ggufkit.formats.gguf_reader import read_gguf

    metadata = read_gguf(path).metadata
    text = modelfile(path.name, metadata)
    for stop in stop_tokens(metadata):
        line = f'PARAMETER stop "{stop}"'
        if line not in text:
            text += line + "\n"
    return text


def write_modelfile(outdir: Path, artefact: Any, manifest_path: Path, repo_id: str) -> Path:
    """An Ollama Modelfile for ``artefact`` (``ollama create NAME -f Modelfile`` beside it)."""
    started = time.monotonic()
    path = outdir / MODELFILE
    write_text_atomic(path, modelfile_text(artefact.path))
    record_artefact(
        manifest_path,
        path,
        step="publish",
        inputs=[file_input(artefact.path, role="model")],
        options={"repo_id": repo_id},
        command=["ggufkit", "publish", repo_id],
        seconds=time.monotonic() - started,
    )
    return path


def modelfile(name: str, metadata: dict[str, Any]) -> str:
    """An Ollama Modelfile; with the FastChat format the file was converted with, its prompt."""
    from ggufkit.convert.chat_formats import FORMATS

    lines = [f"FROM ./{name}"]
    chosen = FORMATS.get(str(metadata.get(CHAT_NAME_KEY)))
    if chosen is not None and chosen.style in ("add_colon_single", "add_colon_two"):
        user, assistant = chosen.roles
        system = chosen.system_template.replace("{system_message}", chosen.system_message)
        template = f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{system}{{{{ end }}}}"
        template += f"{chosen.sep}{user}: {{{{ .Prompt }}}}{chosen.sep}{assistant}:"
        lines.append(f'TEMPLATE """{template}"""')
        for stop in (*chosen.stop, f"{user}:"):
            lines.append(f'PARAMETER stop "{stop}"')
    elif metadata.get("tokenizer.chat_template"):
        lines.append("# the file's tokenizer.chat_template is read by Ollama itself")
    return "\n".join(lines) + "\n"
