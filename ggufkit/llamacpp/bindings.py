"""Import ``llama_cpp`` so that it loads *our* CMake build's libllama, not a copy of its own."""

from __future__ import annotations

import os
import sys
from types import ModuleType

from ggufkit.core.errors import ToolMissingError
from ggufkit.llamacpp.build import current_build


def load_llama_cpp() -> ModuleType:
    """Set LLAMA_CPP_LIB_PATH to the build's library folder, then import llama_cpp."""
    if "llama_cpp" in sys.modules:
        return sys.modules["llama_cpp"]
    info = current_build()
    os.environ["LLAMA_CPP_LIB_PATH"] = str(info.lib_dir)
    try:
        import llama_cpp
    except ImportError as exc:
        raise ToolMissingError(
            f"the llama-cpp-python bindings are not importable: {exc}",
            hint="run `ggufkit build` (it installs them against the build, without recompiling)",
        ) from exc
    from ggufkit.llamacpp.chat_deferred import defer_chat_templates

    defer_chat_templates(llama_cpp)  # no chat template is compiled when a model is opened
    return llama_cpp
