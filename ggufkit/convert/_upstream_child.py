"""Child process of the upstream engine: the pinned ``convert_hf_to_gguf.py`` with ggufkit's answers.

Run as ``python _upstream_child.py SETTINGS.json UPSTREAM-ARGS...``. It imports nothing from
ggufkit: the pinned gguf-py must come first on the path, and ggufkit imports the PyPI ``gguf``.
Answers are given to upstream, each only where upstream would otherwise be wrong or stop:

- the BPE pre-tokenizer, when upstream does not know the tokenizer's hash (every locally trained
  or extended tokenizer): the name ggufkit derives from tokenizer.json, asked of the parent only
  then (a line on stderr; the answer comes in a file named in the settings);
- Falcon's key/value head count: transformers 5 saves ``num_kv_heads`` equal to the head count
  for a multi-query model, which has one key/value head;
- config fields a checkpoint saved by transformers 5 lacks or names anew, per architecture
  (ggufkit.convert.arch_answers);
- tensor names a checkpoint saved by transformers 5 gives otherwise than the names upstream maps,
  tensor layouts upstream gets wrong, and converter patches for what upstream reads only in a
  release's own form, per architecture (``_upstream_tensors``);
- a byte-level BPE tokenizer.json read as such where the converter reads only a sentencepiece
  tokenizer.model that the checkpoint lacks (arch_answers.BPE_WITHOUT_SENTENCEPIECE);
- DeepSeek-V3.2's BOS check, asked of the tokenizer transformers 5 runs;
- Gemma 3n's key/value weights of the layers that reuse an earlier layer's cache: transformers 5
  saves none, llama.cpp's loader wants them for every layer and its graph reads them only before
  layer 20, the released layouts' first shared one (zeros are written there, and only there);
- the chat template chosen by ``--chat-template`` and its provenance keys, written after
  upstream's own special-token keys (so the variant for the file's add_bos is known).

It also adds the string keys of ``extra_kv`` (a vision pair's ``ggufkit.vision.*``) to the header.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

FALCON = ("FalconForCausalLM", "RWForCausalLM")
# ggufkit.convert.upstream.NEED_PRE_TOKENIZER (this file imports nothing from ggufkit).
NEED_PRE_TOKENIZER = "ggufkit-request: pre-tokenizer"
RUNTIME_TOKENIZER = "runtime-tokenizer.json"  # written beside the answer file before asking


def main(argv: list[str]) -> None:
    settings = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    source = Path(settings["source"])
    # This file's own directory (ggufkit/convert) must not shadow upstream's modules.
    sys.path[0] = str(source)
    sys.path.insert(0, str(source / "gguf-py"))
    import gguf
    from conversion import base

    _fix_falcon_kv_heads(base)
    _bos_as_the_tokenizer_runs()
    _gemma3n_shared_kv_placeholders()
    _fill_hparams(base, settings.get("hparams") or {}, settings.get("hparams_renamed") or {})
    renames, layouts = settings.get("tensor_renames") or [], settings.get("tensor_layouts") or []
    patches = settings.get("converter_patches") or []
    if renames or layouts or patches:
        _sibling("_upstream_tensors").install(base, gguf, renames, layouts, patches)
    if settings.get("bpe_without_sentencepiece"):
        _bpe_without_sentencepiece(base)
    if settings.get("pre_tokenizer_file"):
        _pre_tokenizer_fallback(base, Path(settings["pre_tokenizer_file"]))
    if settings.get("chat"):
        _chat_template(gguf, settings["chat"], set(settings["bpe_pre_adding_bos"]))
    if settings.get("extra_kv"):
        _extra_kv(gguf, settings["extra_kv"])
    import convert_hf_to_gguf as upstream

    sys.argv = [str(source / "convert_hf_to_gguf.py"), *argv[2:]]
    upstream.main()


def _sibling(name: str) -> Any:
    """A module beside this file that imports nothing from ggufkit (loaded by path: this
    directory is not on the child's path, so as not to shadow upstream's modules)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fix_falcon_kv_heads(base: Any) -> None:
    original = base.ModelBase.load_hparams

    def load_hparams(dir_model: Path, is_mistral_format: bool) -> Any:
        hparams = original(dir_model, is_mistral_format)
        if (
            isinstance(hparams, dict)
            and set(hparams.get("architectures") or ()) & set(FALCON)
            and hparams.get("multi_query")
            and not hparams.get("new_decoder_architecture")
        ):
            hparams["num_kv_heads"] = 1
        return hparams

    base.ModelBase.load_hparams = staticmethod(load_hparams)


def _bos_as_the_tokenizer_runs() -> None:
    """DeepSeek-V3.2's converter asserts ``tokenizer.add_bos_token``, which transformers 5
    leaves False for every tokenizer.json-backed tokenizer (the BOS comes from the
    post-processor): ask whether the tokenizer adds BOS, as the assertion means."""
    try:
        from conversion import deepseek
    except ImportError:
        return

    def set_vocab(self: Any) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.dir_model)
        ids = tokenizer("a")["input_ids"]
        assert ids and ids[0] == tokenizer.bos_token_id, "the tokenizer must add BOS"
        print("ggufkit: answered add_bos_token=True (the tokenizer adds BOS)", file=sys.stderr)
        self._set_vocab_gpt2()

    deepseek.DeepseekV32Model.set_vocab = set_vocab


GEMMA3N_FIRST_SHARED = 20  # llama.cpp's gemma3n: n_layer_kv_from_start (E2B 30 - 10, E4B 35 - 15)


def _gemma3n_shared_kv_placeholders() -> None:
    try:
        from conversion import gemma
    except ImportError:
        return
    original = gemma.Gemma3NModel.generate_extra_tensors

    def generate_extra_tensors(self: Any) -> Any:
        yield from original(self)
        yield from shared_kv_placeholders(self.hparams, set(self.model_tensors))

    gemma.Gemma3NModel.generate_extra_tensors = generate_extra_tensors


def shared_kv_placeholders(hparams: dict[str, Any], names: set[str]) -> Any:
    """(name, zeros) for each key/value weight a KV-shared Gemma 3n layer lacks, where the
    shared layers start where llama.cpp's graph stops reading them; else nothing (llama.cpp
    then refuses the file rather than compute with zeros)."""
    import re

    import torch

    n_layers = int(hparams["num_hidden_layers"])
    if n_layers - int(hparams.get("num_kv_shared_layers") or 0) != GEMMA3N_FIRST_SHARED:
        return
    head, hidden = int(hparams["head_dim"]), int(hparams["hidden_size"])
    kv_width = int(hparams["num_key_value_heads"]) * head
    shapes: dict[str, tuple[int, ...]] = {"k_norm.weight": (head,)}
    shapes |= {"k_proj.weight": (kv_width, hidden), "v_proj.weight": (kv_width, hidden)}
    layers: set[int] = set()
    for name in sorted(names):
        found = re.fullmatch(r"(.*\blayers\.(\d+)\.self_attn\.)q_proj\.weight", name)
        if not found or int(found.group(2)) < GEMMA3N_FIRST_SHARED or "vision" in name:
            continue
        for suffix, shape in shapes.items():
            if found.group(1) + suffix not in names:
                layers.add(int(found.group(2)))
                yield found.group(1) + suffix, torch.zeros(shape)
    if layers:
        print(
            f"ggufkit: answered the key/value weights of KV-shared layers {min(layers)}-"
            f"{max(layers)} (transformers 5 saves none; llama.cpp reads none): zeros",
            file=sys.stderr,
        )


def _fill_hparams(base: Any, answers: dict[str, Any], renamed: dict[str, Any]) -> None:
    """Config fields the checkpoint lacks, with the values transformers computes with, and
    fields in the names upstream reads (ggufkit.convert.arch_answers). Given where upstream
    loads the config, and where a model class reads config.json itself (Mamba-2 hybrids) and
    hands the dict to the base class."""
    if not answers and not renamed:
        return
    said: set[str] = set()

    def answer(hparams: Any) -> Any:
        if isinstance(hparams, dict):
            lines = _fill(hparams, answers, "")
            for key, value in renamed.items():
                hparams[key] = value
                lines.append(f"answered {key} in upstream's names: {value!r}")
            for line in lines:
                if line not in said:
                    said.add(line)
                    print(f"ggufkit: {line}", file=sys.stderr)
        return hparams

    original = base.ModelBase.load_hparams
    original_init = base.ModelBase.__init__

    def load_hparams(dir_model: Path, is_mistral_format: bool) -> Any:
        return answer(original(dir_model, is_mistral_format))

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        answer(kwargs.get("hparams"))
        original_init(self, *args, **kwargs)

    base.ModelBase.load_hparams = staticmethod(load_hparams)
    base.ModelBase.__init__ = __init__


def _fill(hparams: dict[str, Any], answers: dict[str, Any], prefix: str) -> list[str]:
    """Set each answer ``hparams`` lacks (a dict answer fills the dict of that name); returns
    what was set."""
    done: list[str] = []
    for key, value in answers.items():
        if isinstance(value, dict) and isinstance(hparams.get(key), dict):
            done += _fill(hparams[key], value, f"{prefix}{key}.")
        elif key not in hparams:
            hparams[key] = value
            done.append(f"answered {prefix}{key}={value!r} (transformers' value)")
    return done


def _bpe_without_sentencepiece(base: Any) -> None:
    original = base.TextModel._set_vocab_sentencepiece

    def _set_vocab_sentencepiece(self: Any, *args: Any, **kwargs: Any) -> Any:
        folder = Path(self.dir_model)
        if (folder / "tokenizer.model").is_file() or not (folder / "tokenizer.json").is_file():
            return original(self, *args, **kwargs)
        print(
            "ggufkit: answered the vocabulary from tokenizer.json (BPE; no tokenizer.model)",
            file=sys.stderr,
        )
        return self._set_vocab_gpt2()

    base.TextModel._set_vocab_sentencepiece = _set_vocab_sentencepiece


def _pre_tokenizer_fallback(base: Any, answer_file: Path) -> None:
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(original(self, tokenizer))
        except NotImplementedError:
            _write_runtime_tokenizer(tokenizer, answer_file)
            name = _ask_parent(answer_file)
            if not name:
                raise
            print(f"ggufkit: pre-tokenizer {name!r}, derived from tokenizer.json", file=sys.stderr)
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def _write_runtime_tokenizer(tokenizer: Any, answer_file: Path) -> None:
    """The tokenizer as transformers runs it (it may rebuild a family's pre-tokenizer whatever
    tokenizer.json says), for the parent to derive the name from without importing
    transformers and torch itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    target = answer_file.with_name(RUNTIME_TOKENIZER)
    partial = target.with_suffix(".partial")
    partial.write_text(backend.to_str(), encoding="utf-8")
    os.replace(partial, target)


def _ask_parent(answer_file: Path, timeout: float = 600.0) -> str:
    """The pre-tokenizer ggufkit derives from tokenizer.json ("" when it cannot tell): asked of
    the parent on stderr, answered in ``answer_file``."""
    print(NEED_PRE_TOKENIZER, file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while not answer_file.is_file():
        if time.monotonic() > deadline:
            return ""
        time.sleep(0.02)
    return answer_file.read_text(encoding="utf-8").strip()


def _chat_template(gguf: Any, chat: dict[str, Any], bpe_pre_adding_bos: set[str]) -> None:
    original = gguf.SpecialVocab.add_to_gguf

    def add_to_gguf(self: Any, gw: Any, quiet: bool = False) -> None:
        original(self, gw, quiet)
        kv = gw.kv_data[0]
        if "ggufkit.chat_template.source" in kv:
            return
        values = {key: value.value for key, value in kv.items()}
        if "tokenizer.ggml.add_bos_token" in values:
            add_bos = bool(values["tokenizer.ggml.add_bos_token"])
        else:  # llama.cpp's default, as ggufkit.convert.chat_templates.effective_add_bos
            model, pre = values.get("tokenizer.ggml.model"), values.get("tokenizer.ggml.pre")
            add_bos = model == "llama" or (model == "gpt2" and pre in bpe_pre_adding_bos)
        text = chat["jinja_bos"] if add_bos else chat["jinja_plain"]
        if text is not None:
            kv.pop("tokenizer.chat_template", None)
            gw.add_chat_template(text)
        for key, value in chat["kv"].items():
            if isinstance(value, list):
                gw.add_array(key, value)
            else:
                gw.add_string(key, value)

    gguf.SpecialVocab.add_to_gguf = add_to_gguf


def _extra_kv(gguf: Any, extra: dict[str, Any]) -> None:
    original = gguf.GGUFWriter.write_header_to_file

    def write_header_to_file(self: Any, path: Path | None = None) -> None:
        for key, value in extra.items():
            if key not in self.kv_data[0]:
                if isinstance(value, list):
                    self.add_array(key, value)
                else:
                    self.add_string(key, value)
        original(self, path)

    gguf.GGUFWriter.write_header_to_file = write_header_to_file


if __name__ == "__main__":
    main(sys.argv)
