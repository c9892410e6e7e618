"""Special tokens, add_bos/add_eos and normalizer flags, read as the pinned upstream reads them.

ggufkit writes with the PyPI ``gguf`` package, whose ``SpecialVocab`` is older than the gguf-py
the pinned ``convert_hf_to_gguf.py`` ships. For byte-level BPE tokenizers (Llama 3, SmolLM,
GPT-2 style) the two read ``tokenizer.json`` differently, and the file changes with it:

- a ``ByteLevel`` post-processor (alone, or first in a ``Sequence`` as in Llama 3) means "add
  neither BOS nor EOS" unless a later step says otherwise;
- a template's leading special token that tokenizer_config.json does not name becomes its BOS
  (and CLS), so its id is written;
- tokenizer_config.json's ``add_bos_token``/``add_eos_token`` only fill in what the
  post-processor left open (the post-processor is what the tokenizer really does);
- ``Lowercase``/``StripAccents`` normalizers become ``tokenizer.ggml.normalizer.*`` keys.

:class:`UpstreamSpecialVocab` keeps the library's reading of merges, chat templates and token
ids, and redoes the post-processor and tokenizer_config.json parts with the pinned semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf

KEY_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
KEY_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


def _json_file(path: Path) -> Any:
    from ggufkit.core.errors import TokenizerError
    from ggufkit.core.fsutil import read_json

    return read_json(path, TokenizerError, missing=None)  # bounded, as every settings file


def _special_id(entry: Any) -> Any:
    """The token a template entry names, when it is a ``SpecialToken`` (else None)."""
    return entry.get("SpecialToken", {}).get("id") if isinstance(entry, dict) else None


def normalizer_flags(normalizer: Any) -> dict[str, Any]:
    """``{"lowercase": ..., "strip_accents": ...}`` as far as the normalizer says."""
    flags: dict[str, Any] = {}
    if not isinstance(normalizer, dict):
        return flags
    kind = normalizer.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for name in ("lowercase", "strip_accents"):
            if name in normalizer:
                flags[name] = normalizer[name]
    elif kind == "Sequence":
        for step in normalizer.get("normalizers", []):
            flags.update(normalizer_flags(step))
    return flags


class _Names:
    """The bos/cls/eos/sep strings of tokenizer_config.json, updated as the template fills them
    in (and written back into ``config``, as the library's token-id pass then reads them)."""

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = config
        get = (config or {}).get
        self.bos, self.cls, self.eos, self.sep = (
            get(f"{t}_token") for t in ("bos", "cls", "eos", "sep")
        )
        if not self.bos and self.cls and config:
            config["bos_token"] = self.bos = self.cls
        if not self.eos and self.sep and config:
            config["eos_token"] = self.eos = self.sep

    def set(self, typ: str, value: Any) -> None:
        setattr(self, typ, value)
        if self.config:
            self.config[f"{typ}_token"] = value


class UpstreamSpecialVocab(gguf.SpecialVocab):
    """``gguf.SpecialVocab`` with the pinned gguf-py's reading of the post-processor, the
    normalizer and tokenizer_config.json's ``add_*_token`` (see the module's docstring)."""

    def __init__(
        self,
        path: str | Path,
        load_merges: bool = False,
        special_token_types: Iterable[str] | None = None,
        n_vocab: int | None = None,
        tokenizer_json: Any = None,
    ) -> None:
        self.normalizer: dict[str, Any] = {}
        # tokenizer.json as the caller parsed it (read here if None); gguf-py's own reading of
        # merges and the chat template opens the file itself.
        self._tokenizer_json = tokenizer_json
        super().__init__(
            path, load_merges=load_merges, special_token_types=special_token_types, n_vocab=n_vocab
        )

    def add_to_gguf(self, gw: gguf.GGUFWriter, quiet: bool = False) -> None:
        super().add_to_gguf(gw, quiet=quiet)
        for name, key in (("lowercase", KEY_LOWERCASE), ("strip_accents", KEY_STRIP_ACCENTS)):
            value = self.normalizer.get(name)
            if value is not None:
                gw.add_bool(key, bool(value))

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        types = tuple(self.special_token_types)
        library_log = logging.getLogger("gguf.vocab")  # its warnings are about its own reading
        level = library_log.level
        library_log.setLevel(logging.ERROR)
        try:
            super()._try_load_from_tokenizer_json(path)  # merges and chat template, kept as read
        finally:
            library_log.setLevel(level)
        self.special_token_types = types
        self.add_special_token, self.special_token_ids = {}, {}
        tokenizer = self._tokenizer_json
        if tokenizer is None:
            tokenizer = _json_file(path / "tokenizer.json")
        config = _json_file(path / "tokenizer_config.json")
        if not isinstance(config, dict):
            config = None
        added: list[Any] = []
        if isinstance(tokenizer, dict):
            self.normalizer = normalizer_flags(tokenizer.get("normalizer"))
            added = list(tokenizer.get("added_tokens") or [])
            processor = tokenizer.get("post_processor")
            if isinstance(processor, dict):
                self._post_processor(processor, _Names(config))
        if not config:
            return True
        for typ in self.special_token_types:
            adds = config.get(f"add_{typ}_token")
            if isinstance(adds, bool):
                self.add_special_token.setdefault(typ, adds)  # the post-processor's word wins
            entry = config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                ids = (
                    a.get("id")
                    for a in added
                    if isinstance(a, dict) and a.get("content") == content
                )
                self._set_special_token(typ, next(ids, None))
        return True

    def _post_processor(self, processor: dict[str, Any], names: _Names) -> None:
        for step in processor.get("processors", [processor]):
            kind = step.get("type") if isinstance(step, dict) else None
            if kind == "ByteLevel":
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add_special_token.update(bos=True, eos=True, sep=True)
                if not names.cls and names.config:
                    names.set("cls", step.get("cls", [names.bos])[0])
                if not names.sep and names.config:
                    names.set("sep", step.get("sep", [names.eos])[0])
            elif kind == "TemplateProcessing":
                self._template(step.get("single", []), step.get("pair", []), names)

    def _template(self, single: list[Any], pair: list[Any], names: _Names) -> None:
        first = last = None
        if len(single) > 1:
            first = _special_id(single[0])
            if first:
                if not names.config:
                    names.bos = first
                elif first not in (names.bos, names.cls):
                    if not names.bos:
                        names.set("bos", first)
                    if not names.cls:
                        names.set("cls", first)
                self.add_special_token["bos"] = first in (names.bos, names.cls)
            last = _special_id(single[-1])
            if last:
                if not names.config:
                    names.eos = last
                elif last != names.eos:
                    # The old EOS stays known as EOT (or EOM) when the template ends otherwise.
                    for extra in ("eot", "eom"):
                        if extra not in self.special_token_types:
                            self.special_token_types = (*self.special_token_types, extra)
                            names.config[f"{extra}_token"] = names.eos
                            break
                    names.set("eos", last)
                self.add_special_token["eos"] = last == names.eos
        if not pair:
            return
        start = 1 if first and _special_id(pair[0]) == first else 0
        stop = -1 if last and _special_id(pair[-1]) == last else None
        inner = pair[start:stop]
        if not inner:
            return
        ends = [e.get("Sequence", {}).get("id") if isinstance(e, dict) else None for e in inner]
        middle = inner[1:-1]
        if ends[0] != "A" or ends[-1] != "B" or not middle:
            return
        separators = (names.sep, names.eos)
        entry = _special_id(middle[0])
        add_sep = bool(entry) and entry in separators and not last
        second = _special_id(middle[1]) if len(middle) == 2 else None
        if second and second in separators:
            add_sep = True
        self.add_special_token["sep"] = add_sep
        if add_sep and not names.sep and names.config:
            names.set("sep", names.eos)
