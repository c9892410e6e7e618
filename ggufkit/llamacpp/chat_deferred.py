"""llama-cpp-python without compiling chat templates when a model is opened.

``Llama(...)`` builds a ``Jinja2ChatFormatter`` for every ``tokenizer.chat_template*`` of the
file, which compiles the template in the process that loads the model: a template whose constant
is 300 million characters long exhausts memory on ``open``, before anything asks for a chat.
:func:`defer_chat_templates` (called by ``bindings.load_llama_cpp``) replaces that class with
:class:`DeferredChatFormatter`, which keeps the template as text and renders it only when a chat
is formatted: through :data:`renderer` when one is set (``ggufkit.inference.chat_render`` sets a
child process under limits), else with llama-cpp-python's own formatter.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

# (template, context) -> prompt; set by the code that renders chats under limits.
renderer: Callable[[str, dict[str, Any]], str] | None = None


def defer_chat_templates(llama_cpp: ModuleType) -> None:
    formats = llama_cpp.llama_chat_format
    upstream = getattr(formats, "UpstreamJinja2ChatFormatter", formats.Jinja2ChatFormatter)
    formats.UpstreamJinja2ChatFormatter = upstream

    class DeferredChatFormatter:
        # llama-cpp-python's own formatter looks this up by its module-level class name.
        IgnoreGenerationTags = getattr(upstream, "IgnoreGenerationTags", None)

        def __init__(
            self,
            template: str,
            eos_token: str,
            bos_token: str,
            add_generation_prompt: bool = True,
            stop_token_ids: list[int] | None = None,
        ) -> None:
            self.template = template
            self.eos_token = eos_token
            self.bos_token = bos_token
            self.add_generation_prompt = add_generation_prompt
            self.stop_token_ids = stop_token_ids

        def __call__(self, *, messages: list[Any], **kwargs: Any) -> Any:
            if renderer is None:
                formatter = upstream(
                    self.template,
                    self.eos_token,
                    self.bos_token,
                    self.add_generation_prompt,
                    self.stop_token_ids,
                )
                return formatter(messages=messages, **kwargs)
            context = {
                "messages": messages,
                "eos_token": self.eos_token,
                "bos_token": self.bos_token,
                "add_generation_prompt": self.add_generation_prompt,
                **{key: value for key, value in kwargs.items() if _plain(value)},
            }
            prompt = renderer(self.template, context)
            stopping = None
            if self.stop_token_ids is not None:
                stops = set(self.stop_token_ids)

                def stop_on_last_token(tokens: Any, logits: Any) -> bool:
                    return bool(tokens[-1] in stops)

                stopping = llama_cpp.llama.StoppingCriteriaList([stop_on_last_token])
            return formats.ChatFormatterResponse(
                prompt=prompt, stop=[self.eos_token], stopping_criteria=stopping, added_special=True
            )

        def to_chat_handler(self) -> Any:
            return formats.chat_formatter_to_chat_completion_handler(self)

    formats.Jinja2ChatFormatter = DeferredChatFormatter


def _plain(value: Any) -> bool:
    """Whether ``value`` travels to a renderer as JSON (tools, functions: dicts and lists)."""
    return value is None or isinstance(value, str | int | float | bool | list | dict)
