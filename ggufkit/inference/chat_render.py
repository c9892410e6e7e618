"""``run --chat``: the GGUF's chat template rendered under limits, not in llama.cpp's process.

``ggufkit.llamacpp.chat_deferred`` keeps llama-cpp-python from compiling templates when it opens
a file; :func:`limit_chat_templates` gives it a renderer: one
:class:`~ggufkit.convert.template_sandbox.TemplateSandbox` child per run (memory cap, deadline,
bounded output), reused for every message. A template that passes a limit is an InputError
naming the file.
"""

from __future__ import annotations

from pathlib import Path

from ggufkit.convert.template_sandbox import TemplateSandbox
from ggufkit.llamacpp import chat_deferred


class ChatSandbox(TemplateSandbox):
    """The sandbox behind ``chat_deferred.renderer``, which it unsets when it is closed."""

    def close(self) -> None:
        if chat_deferred.renderer == self.render:
            chat_deferred.renderer = None
        super().close()


def limit_chat_templates(model: Path, template: str) -> TemplateSandbox:
    """Render chats for ``model`` in a limited child from now on; ``template`` (the file's
    ``tokenizer.chat_template``) is compiled there right away. Close the sandbox when done: that
    unsets the renderer."""
    sandbox = ChatSandbox(f"the chat template of {model.name} (tokenizer.chat_template)")
    try:
        sandbox.check(template)
    except BaseException:
        sandbox.close()
        raise
    chat_deferred.renderer = sandbox.render
    return sandbox
