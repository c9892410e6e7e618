"""``convert(chat_template=NAME|FILE|"auto")``: which chat template a GGUF gets, as Jinja.

llama.cpp and llama-cpp-python format a chat with the file's ``tokenizer.chat_template``; without
one they fall back to a generic format the model never saw. ``auto`` keeps the checkpoint's own
template; otherwise it picks a FastChat format from the model's name (``chat_formats``) and says
so, and when nothing matches it writes none and says how to choose one. The Jinja written for a
FastChat format renders exactly FastChat's ``get_prompt()``, ending with the assistant's turn
opened, with the model's BOS/EOS strings, and starts with BOS when the tokenizer adds one:
llama-cpp-python adds no BOS to a rendered chat prompt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.convert.chat_formats import FORMATS, NAME_RULES, ChatFormat
from ggufkit.core.errors import ConfigError, InputError, UsageError
from ggufkit.core.fsutil import read_json
from ggufkit.core.log import get_logger

log = get_logger("convert.chat")

AUTO = "auto"
TEMPLATE_KEY = "tokenizer.chat_template"
# Provenance: where the template came from, and the strings that end a reply besides EOS.
KEY_NAME = "ggufkit.chat_template.name"
KEY_SOURCE = "ggufkit.chat_template.source"
KEY_REASON = "ggufkit.chat_template.reason"
KEY_STOP = "ggufkit.chat_template.stop"


@dataclass(frozen=True)
class ChatTemplateChoice:
    """What convert writes: ``source`` is "checkpoint", "fastchat", "file" or "none"."""

    source: str
    name: str | None
    reason: str
    # FastChat: the Jinja for a tokenizer that adds BOS and for one that does not; file: both same.
    jinja_bos: str | None = None
    jinja_plain: str | None = None
    stop: tuple[str, ...] = field(default=())

    def jinja(self, add_bos: bool) -> str | None:
        return self.jinja_bos if add_bos else self.jinja_plain

    def note(self) -> str:
        if self.source == "none":
            return f"chat template: none written ({self.reason})"
        return f"chat template: {self.name} ({self.reason})"


# --- choosing --------------------------------------------------------------------------------


def checkpoint_template(model_dir: Path) -> str | None:
    """The checkpoint's own template: chat_template.jinja, chat_template.json or the config's."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            value = read_json(path, ConfigError).get("chat_template")
        except (ConfigError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value:  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            default = named.get("default")
            if isinstance(default, str) and default:
                return default
    return None


def match_family(model_name: str) -> tuple[str, str] | None:
    """(template, reason) from the model id or directory name, as FastChat's adapters match."""
    lowered = model_name.lower().rstrip("/")
    last = lowered.split("/")[-1]
    for needle, extra, template in NAME_RULES:
        if needle in lowered and (not extra or extra in last):
            also = f" and {extra!r}" if extra else ""
            return template, f"auto: the model name {model_name!r} contains {needle!r}{also}"
    return None


def choose_chat_template(option: str, model_dir: Path, model_name: str) -> ChatTemplateChoice:
    """Resolve ``--chat-template``: a FastChat NAME, a Jinja FILE, or ``auto``.

    A template from a file (FILE, or the checkpoint's own) is compiled and test-rendered in a
    child process under limits (``template_sandbox``) before it is written into a GGUF."""
    if option == AUTO:
        own = checkpoint_template(model_dir)
        if own is not None:
            check_checkpoint_template(own, model_dir)
            return ChatTemplateChoice("checkpoint", "checkpoint", "auto: the checkpoint's own")
        found = match_family(model_name)
        if found is None:
            return ChatTemplateChoice(
                "none",
                None,
                f"the checkpoint has none and the name {model_name!r} matches no known family; "
                # written into the file (KEY_REASON) as it always was: kept byte for byte
                f"choose one with --chat-template NAME|FILE (names: {', '.join(FORMATS)})",
            )
        return fastchat_choice(FORMATS[found[0]], found[1])
    if option in FORMATS:
        return fastchat_choice(FORMATS[option], "named with --chat-template")  # KEY_REASON
    path = Path(option)
    if path.is_file():
        return file_choice(path)
    raise UsageError(
        f"`chat_template` {option!r} is neither a template name nor a file",
        hint=f"use auto, a Jinja file, or one of: {', '.join(FORMATS)}",
    )


def fastchat_choice(fmt: ChatFormat, reason: str) -> ChatTemplateChoice:
    return ChatTemplateChoice(
        "fastchat",
        fmt.name,
        f"{reason}; FastChat's {fmt.name!r} format ({fmt.used_by})",
        jinja_bos=fastchat_jinja(fmt, add_bos=True),
        jinja_plain=fastchat_jinja(fmt, add_bos=False),
        stop=fmt.stop,
    )


def file_choice(path: Path) -> ChatTemplateChoice:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the chat template {path}: {exc}") from exc
    check_jinja(text, path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return ChatTemplateChoice(
        "file", path.name, f"from {path} (sha256 {digest[:12]})", jinja_bos=text, jinja_plain=text
    )


def check_jinja(text: str, path: Path) -> None:
    """``--chat-template FILE``: a valid template that renders a chat within the limits."""
    _test_render(text, f"the chat template {path}", strict=True)


def check_checkpoint_template(text: str, model_dir: Path) -> None:
    """``auto``: the checkpoint's own template must render within the limits (a template that
    Jinja cannot compile is kept, with a warning: llama.cpp has its own template engine)."""
    _test_render(text, f"the chat template of the checkpoint {model_dir}", strict=False)


def _test_render(text: str, source: str, *, strict: bool) -> None:
    """A limit broken is always an error; an invalid template is one only when ``strict``."""
    from ggufkit.convert.template_sandbox import TemplateLimitError, TemplateSandbox

    with TemplateSandbox(source) as sandbox:
        try:
            sandbox.test_render(text)
        except TemplateLimitError:
            raise
        except InputError as exc:
            if strict:
                raise UsageError(exc.message, hint=exc.hint) from exc
            log.warning("%s", exc.message)


# --- writing ---------------------------------------------------------------------------------

# llama.cpp's add_bos when the file does not say (src/llama-vocab.cpp): on for sentencepiece,
# off for BPE except the pre-tokenizers that set it.
_BPE_PRE_ADDING_BOS = frozenset(
    [
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
    ]
)


def effective_add_bos(kv: dict[str, Any]) -> bool:
    """Whether llama.cpp adds BOS for a file with these ``tokenizer.ggml.*`` values."""
    if "tokenizer.ggml.add_bos_token" in kv:
        return bool(kv["tokenizer.ggml.add_bos_token"])
    model, pre = kv.get("tokenizer.ggml.model"), kv.get("tokenizer.ggml.pre")
    return model == "llama" or (model == "gpt2" and pre in _BPE_PRE_ADDING_BOS)


def provenance(choice: ChatTemplateChoice) -> dict[str, str | list[str]]:
    """The ``ggufkit.chat_template.*`` keys recording the template's name and origin."""
    if choice.source == "none":
        return {}
    keys: dict[str, str | list[str]] = {
        KEY_NAME: choice.name or "",
        KEY_SOURCE: choice.source,
        KEY_REASON: choice.reason,
    }
    if choice.stop:
        keys[KEY_STOP] = list(choice.stop)
    return keys


def apply_chat_template(writer: Any, choice: ChatTemplateChoice) -> list[str]:
    """Write the chosen template and its provenance into a ``gguf.GGUFWriter``; returns notes."""
    kv = writer.kv_data[0]
    values = {key: value.value for key, value in kv.items()}
    text = choice.jinja(effective_add_bos(values))
    if text is not None:
        kv.pop(TEMPLATE_KEY, None)  # a named template replaces the checkpoint's own
        writer.add_chat_template(text)
    for key, value in provenance(choice).items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, value)
    return [choice.note()]


def child_settings(choice: ChatTemplateChoice) -> dict[str, Any]:
    """What the upstream engine's child process needs to write the same keys."""
    return {
        "chat": {
            "jinja_bos": choice.jinja_bos,
            "jinja_plain": choice.jinja_plain,
            "kv": provenance(choice),
        },
        "bpe_pre_adding_bos": sorted(_BPE_PRE_ADDING_BOS),
    }


def report(choice: ChatTemplateChoice) -> None:
    """Log the choice once the file is written (a warning when none was written)."""
    if choice.source == "none":
        log.warning("%s", choice.note())
    else:
        log.info("%s", choice.note())


# --- FastChat formats as Jinja ----------------------------------------------------------------


def _lit(text: str) -> str:
    """A Jinja string literal (its lexer unescapes backslash sequences)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _expr(text: str) -> str:
    """A Jinja expression for ``text`` with ``{bos}``/``{eos}`` as the model's own strings."""
    parts = [p for p in re.split(r"(\{bos\}|\{eos\})", text) if p]
    terms = [{"{bos}": "bos_token", "{eos}": "eos_token"}.get(part, _lit(part)) for part in parts]
    return _join(*terms)


def _join(*terms: str) -> str:
    """Jinja concatenation of expressions, empty literals left out."""
    kept = [term for term in terms if term != '""']
    return " ~ ".join(kept) or '""'


def _turns(fmt: ChatFormat) -> tuple[str, str, str, str, str]:
    """(head after the system text, first user turn, later user turn, assistant turn, opening)
    as Jinja expressions; ``m`` is the message."""
    user, bot = fmt.roles
    content = "m['content']"
    if fmt.style == "add_colon_single":
        examples = "".join(f"{role}: {text}{fmt.sep}" for role, text in fmt.examples)
        u = f"{_lit(user + ': ')} ~ {content} ~ {_expr(fmt.sep)}"
        a = f"{_lit(bot + ': ')} ~ {content} ~ {_expr(fmt.sep)}"
        return f"{_expr(fmt.sep)} ~ {_lit(examples)}", u, u, a, _lit(bot + ":")
    if fmt.style == "add_colon_two":
        u = f"{_lit(user + ': ')} ~ {content} ~ {_expr(fmt.sep)}"
        a = f"{_lit(bot + ': ')} ~ {content} ~ {_expr(fmt.sep2)}"
        return _expr(fmt.sep), u, u, a, _lit(bot + ":")
    if fmt.style == "phoenix":
        u = f"{_lit(user + ': ')} ~ bos_token ~ {content} ~ eos_token"
        a = f"{_lit(bot + ': ')} ~ bos_token ~ {content} ~ eos_token"
        return '""', u, u, a, f"{_lit(bot + ': ')} ~ bos_token"
    if fmt.style == "llama2":
        first = f"{content} ~ {_lit(' ')}"
        u = f"{_lit(user + ' ')} ~ {content} ~ {_expr(fmt.sep)}"
        a = f"{_lit(bot + ' ')} ~ {content} ~ {_expr(fmt.sep2)}"
        return '""', first, u, a, _lit(bot)
    raise ValueError(f"no Jinja rendering for FastChat style {fmt.style!r}")


def fastchat_jinja(fmt: ChatFormat, *, add_bos: bool) -> str:
    """Jinja that renders ``fmt``'s ``get_prompt()`` for OpenAI-style ``messages``.

    An optional first system message replaces the default system text; user and assistant
    messages must alternate, starting with the user.
    """
    before, _, after = fmt.system_template.partition("{system_message}")
    system_text = _join(_lit(before), "system", _lit(after))
    if fmt.style == "llama2":  # an empty system message means no <<SYS>> block at all
        system_text = f"({system_text} if system else {_lit(fmt.roles[0] + ' ')})"
    head, first_user, user, assistant, opening = _turns(fmt)
    bos = "{{ bos_token }}" if add_bos else ""
    return (
        f"{{#- FastChat's {fmt.name!r} conversation format, written by ggufkit -#}}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "  {%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}\n"
        "{%- else -%}\n"
        f"  {{%- set system = {_lit(fmt.system_message)} -%}}{{%- set turns = messages -%}}\n"
        "{%- endif -%}\n"
        f"{bos}{{{{ {_join(system_text, head)} }}}}\n"
        "{%- for m in turns -%}\n"
        "  {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        "    {{- raise_exception('user and assistant messages must alternate, user first') -}}\n"
        + (f"  {{%- elif loop.first -%}}{{{{- {first_user} -}}}}\n" if first_user != user else "")
        + f"  {{%- elif m['role'] == 'user' -%}}{{{{- {user} -}}}}\n"
        f"  {{%- else -%}}{{{{- {assistant} -}}}}\n"
        "  {%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{{{{- {opening} -}}}}{{%- endif -%}}\n"
    )
