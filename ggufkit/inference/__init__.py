"""A GGUF run through llama-cpp-python on ggufkit's build: what ``ggufkit run`` and ``ggufkit
verify`` do.

``generate`` (text generation and chat, with ``chat_render``: the GGUF's chat template rendered in
the sandbox), ``parity`` (logits and tokenization against the Hugging Face checkpoint) and
``verify`` (parity as a verdict). It sits above ``evaluate/``, whose corpus, labels and quiet
llama.cpp log it uses; ``evaluate/`` imports nothing of it.
"""
