"""File formats, read and written without llama.cpp: safetensors checkpoints, GGUF, HF config."""
