"""`ggufkit convert`: a Hugging Face checkpoint (directory or Hub id) to a GGUF file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from ggufkit.cli.options import (
    choice_option,
    echo_json,
    echo_result,
    force_option,
    json_option,
    output_option,
    outtype_option,
    path_option,
    split_options,
    threads_option,
)
from ggufkit.convert.families import proven_note
from ggufkit.core.errors import GGUFKitError, UsageError
from ggufkit.core.fsutil import human_bytes


@click.command("convert")
@click.argument("model", required=False)
@output_option("Output file (default: ./<model>-<OUTTYPE>.gguf).")
@outtype_option
@choice_option(
    "--engine",
    choices=["auto", "native", "upstream"],
    default="auto",
    help="native: ggufkit's streaming converter; upstream: the pinned convert_hf_to_gguf.py; "
    "auto: native where it can take the checkpoint, else upstream (saying why). In a "
    "workspace it overrides ggufkit.toml's `engine` for this run.",
)
@click.option(
    "--delta-base",
    default=None,
    metavar="BASE",
    help="MODEL is a delta: add it to BASE (a directory or Hub id) while converting.",
)
@path_option(
    "--lora",
    kind="dir",
    help="A PEFT LoRA adapter directory: merge it into MODEL while converting (as merge-lora; "
    "for the upstream engine into a temporary directory beside the output first).",
)
@click.option(
    "--pre-tokenizer",
    default=None,
    metavar="NAME",
    help="llama.cpp pre-tokenizer (tokenizer.ggml.pre) for a byte-level BPE vocab (BLOOM, Llama "
    "3, SmolLM ...), e.g. llama-bpe, gpt-2 or bloom; by default upstream's name for a known "
    "tokenizer, else detected from tokenizer.json.",
)
@click.option(
    "--chat-template",
    default="auto",
    show_default=True,
    metavar="NAME|FILE|auto",
    help="Chat template written as tokenizer.chat_template: a FastChat name (vicuna_v1.1, "
    "one_shot, zero_shot, phoenix, llama-2), a Jinja file, or auto: the checkpoint's own, else "
    "one recognised from the model's name (vicuna, phoenix, chimera, llama-2), else none.",
)
@click.option(
    "--tokenizer",
    default=None,
    metavar="DIR|REPO_ID",
    help="Legacy .bin input: the original checkpoint's tokenizer (needed for bloomz.cpp and "
    "unversioned GGML files).",
)
@click.option(
    "--context-length",
    type=click.IntRange(min=1),
    default=None,
    help="Legacy .bin input: the model's training context (the files record none).",
)
@choice_option(
    "--mmproj-type",
    choices=["f16", "bf16", "f32", "q8_0"],
    default=None,
    case_sensitive=False,
    help="A vision-language checkpoint: the type of its projector, mmproj-<model>-<TYPE>.gguf "
    "beside OUT (default: f16). "
    "In a workspace: ggufkit.toml's `mmproj_type`.",
)
@force_option("Overwrite an existing output file.")
@split_options
@threads_option
@json_option
def command(
    model: str | None,
    output: Path | None,
    outtype: str,
    engine: str,
    delta_base: str | None,
    lora: Path | None,
    pre_tokenizer: str | None,
    chat_template: str,
    tokenizer: str | None,
    context_length: int | None,
    mmproj_type: str | None,
    force: bool,
    split_max_size: str | None,
    split_max_tensors: int | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Convert a checkpoint to GGUF, streaming one tensor at a time.

    MODEL is a local directory (config.json, weights, tokenizer) or a Hub id (owner/name), or a
    pre-GGUF .bin file: llama.cpp GGML/GGMF/GGJT (LLaMA) or bloomz.cpp GGML (BLOOM), whose
    tensors keep their types (old quantized blocks are repacked, or dequantized to f16).
    The file is written under a temporary name beside OUT and renamed when complete. Without
    MODEL, in a workspace (`ggufkit init`), the model and output come from ggufkit.toml and the
    step is skipped when its inputs have not changed (--force redoes it).

    \b
    Architectures (what the tests prove, on tiny models built locally):
        native    LlamaForCausalLM (LLaMA-1/2, Vicuna, Chimera: sentencepiece; Llama 3,
                  SmolLM: byte-level BPE), BloomForCausalLM (BLOOM, BLOOMZ,
                  Phoenix): logits, tokenizer, tensors = upstream's
        upstream  FalconForCausalLM, Glm4ForCausalLM (GLM-4), MiniCPM3ForCausalLM:
                  logits and tokenizer, with tokenizers upstream has never seen;
                  any other class the pinned convert_hf_to_gguf.py knows: not proven

    \b
    Examples:
        ggufkit convert ./vicuna-7b -o vicuna-7b-f16.gguf
        ggufkit convert ./tiny-llama --outtype q8_0 --threads 4
        ggufkit convert ./phoenix-inst-chat-7b --engine upstream
        ggufkit convert ./vicuna-delta --delta-base ./llama-7b -o vicuna-7b-f16.gguf
        ggufkit convert ./llama-7b --lora ./my-lora -o my-model-f16.gguf
        ggufkit convert ./chimera-inst-chat-7b --chat-template phoenix
        ggufkit init ./tiny-llama && ggufkit convert
        ggufkit convert ggml-model-f16.bin --tokenizer ./phoenix -o phoenix-f16.gguf
        ggufkit convert ./vicuna-7b --split-max-size 2G   # vicuna-7b-F16-00001-of-00007.gguf ...
    """
    from ggufkit.formats.gguf_split import split_limits

    split = split_limits(split_max_size, split_max_tensors)
    if model is None:  # a workspace: model, output and type come from ggufkit.toml
        from ggufkit.workspace import Workspace

        given = click.get_current_context().get_parameter_source("outtype")
        if (
            output is not None
            or delta_base is not None
            or lora is not None
            or pre_tokenizer is not None
            or chat_template != "auto"
            or tokenizer is not None
            or context_length is not None
            or mmproj_type is not None
            or split.active
            or given == ParameterSource.COMMANDLINE
        ):
            raise UsageError(
                "-o, --outtype, --mmproj-type, --delta-base, --lora, --chat-template and the "
                "split size come from ggufkit.toml when MODEL is left out (--pre-tokenizer, "
                "--tokenizer and --context-length need MODEL)",
                hint="edit ggufkit.toml (outdir, name, outtype, mmproj_type, delta_base, lora, "
                "chat_template, split_max_size), or give MODEL",
            )
        engine_given = click.get_current_context().get_parameter_source("engine")
        with options_named():
            step = Workspace.require().convert(
                force=force,
                engine=engine if engine_given == ParameterSource.COMMANDLINE else None,
                threads=threads,
            )
        echo_result(step, as_json, lambda s: s.describe())
        return
    from ggufkit.convert import convert, is_legacy_file

    if (
        Path(model).is_file()  # a directory or Hub id loads nothing of the legacy converter
        and is_legacy_file(model)
        and click.get_current_context().get_parameter_source("outtype")
        == ParameterSource.COMMANDLINE
    ):
        raise UsageError(
            f"{model} is a legacy .bin file: its tensors keep their types, --outtype does not apply",
            hint="convert without --outtype, then `ggufkit quantize` the result",
        )
    with options_named():
        result = convert(
            model,
            output,
            outtype=outtype.lower(),
            engine=engine,
            delta_base=delta_base,
            lora=lora,
            threads=threads,
            force=force,
            pre_tokenizer=pre_tokenizer,
            chat_template=chat_template,
            tokenizer=tokenizer,
            context_length=context_length,
            split=split,
            mmproj_outtype=mmproj_type or "f16",
        )
    result.notes = [in_option_terms(note) for note in result.notes]
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(f"{result.output}")
    if result.mmproj is not None:
        click.echo(f"{result.mmproj}")
    click.echo(
        f"  {result.arch} -> {result.gguf_arch}, {result.outtype}, {result.n_tensors} tensors, "
        f"{human_bytes(result.n_bytes)} in {result.seconds:.1f} s "
        f"({result.mb_per_s:.0f} MB/s, {result.engine} engine)"
    )
    for note in result.notes:
        if not note.startswith("chat template:"):  # already said once, on stderr (the log)
            click.echo(f"  {note}")
    click.echo(f"  {proven_note(result.arch)}")


# convert()'s parameters as the library's messages name them (in backticks) -> this command's
# options: the library speaks Python, this command adds its option names.
OPTION_NAMES = {
    "`force=True`": "--force",
    "another `output`": "-o",
    "`tokenizer`": "--tokenizer",
    "`context_length`": "--context-length",
    "`pre_tokenizer`": "--pre-tokenizer",
    "`delta_base`": "--delta-base",
    '`engine="upstream"`': "--engine upstream",
    "`split`": "--split-max-size/--split-max-tensors",
    "`chat_template`": "--chat-template",
    "`mmproj_outtype`": "--mmproj-type",
}


def in_option_terms(text: str) -> str:
    for name, option in OPTION_NAMES.items():
        text = text.replace(name, option)
    return text


@contextlib.contextmanager
def options_named() -> Iterator[None]:
    """An error of the conversion names this command's options where it names parameters."""
    try:
        yield
    except GGUFKitError as exc:
        exc.message = in_option_terms(exc.message)
        exc.args = (exc.message,)
        exc.hint = in_option_terms(exc.hint) if exc.hint else exc.hint
        raise
