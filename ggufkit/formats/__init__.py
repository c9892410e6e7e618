"""File formats read without converting: the pre-GGUF GGML family (``legacy_ggml``) and the
bloomz.cpp variant of it (``bloomz_cpp``). This layer imports nothing above the core."""
