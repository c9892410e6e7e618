"""The model card's parts for a vision-language model: the projector beside the model files, how to
ask about a picture with the pair, and the projector's provenance.

What it says of llama.cpp holds at the pinned commit: ``-hf`` in ``llama-cli``, ``llama-server``
and ``llama-mtmd-cli`` also downloads a ``.gguf`` of the repo whose name contains ``mmproj``
(``common/download.cpp``: the sibling in the model's folder, the closest in quantization when
there are several; ``--no-mmproj`` turns it off), and a file so named is never taken as the model.
"""

from __future__ import annotations

from ggufkit.core.fsutil import human_bytes
from ggufkit.workspace.card_pick import Artefact

QUESTION = "What is in the picture?"


def projector_line(projector: Artefact) -> str:
    """Under the measured table: the projector is not measured, and goes with every file."""
    size = human_bytes(int(projector.record.get("size") or 0))
    return (
        f"`{projector.path.name}` ({projector.type}, {size}) is the vision projector: every file "
        "above reads pictures with it (it is not quantized with them)."
    )


def pictures_section(repo_id: str, pick: Artefact, projector: Artefact) -> str:
    """How to ask about a picture: from the Hub (the projector found by llama.cpp), after a
    download with llama.cpp's multimodal tool, and with ggufkit."""
    model, mmproj = pick.path.name, projector.path.name
    return "\n\n".join(
        [
            "## Pictures",
            f"A vision-language model: the language model files above answer about a picture "
            f"with the projector `{mmproj}`, converted from the same checkpoint. Straight from "
            f"the Hub, llama.cpp downloads the projector with the model (`-hf` takes the file "
            f"of the repo whose name contains `mmproj`; `--no-mmproj` turns that off):",
            f"```sh\nllama-server -hf {repo_id}:{pick.type}\n"
            f'llama-mtmd-cli -hf {repo_id}:{pick.type} --image picture.png -p "{QUESTION}"\n```',
            "Or download both files first:",
            f"```sh\nhf download {repo_id} {model} {mmproj} --local-dir .\n"
            f"llama-mtmd-cli -m {model} --mmproj {mmproj} --image picture.png "
            f'-p "{QUESTION}"\n'
            f'ggufkit run {model} --mmproj {mmproj} --image picture.png -p "{QUESTION}"\n```',
        ]
    )


def provenance_lines(projector: Artefact) -> list[str]:
    return [
        f"- vision projector: `{projector.path.name}` ({projector.type}, converted with the "
        f"model) sha256 `{projector.record.get('sha256')}`"
    ]
