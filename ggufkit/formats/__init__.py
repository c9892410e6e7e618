"""File formats, read and written without llama.cpp: safetensors checkpoints, GGUF, HF config.
(The pre-GGUF GGML family's reader lives with its converter, ``ggufkit.convert.legacy``.) This
layer imports nothing above the core."""
