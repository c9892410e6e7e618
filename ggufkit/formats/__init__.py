"""File formats, read and written without llama.cpp: safetensors checkpoints, GGUF, HF config,
and the pre-GGUF GGML family (``legacy_ggml``, bloomz.cpp files included). This layer imports
nothing above the core."""
