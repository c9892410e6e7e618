"""The per-family data of the architecture matrix: what a family needs beyond the shrinker.

Each entry is a shape the released family really has (or, in NOTES, says where a row proves
less than the family's full shape); none is code per family.
"""

from __future__ import annotations

from typing import Any

QWEN35_ROPE = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}
# Per family (HF class name): config fields beyond the shrinker's, and tokenizer kinds.
OVERRIDES: dict[str, dict[str, Any]] = {
    # Mistral v0.2+ and Mixtral: no sliding window (llama.cpp's llama graph has none).
    "MistralForCausalLM": {"sliding_window": None},
    "MixtralForCausalLM": {"sliding_window": None},
    # Qwen3 MoE as released: top-k weights renormalised (llama.cpp's graph always does).
    "Qwen3MoeForCausalLM": {"norm_topk_prob": True},
    # StarCoder2 within its 4k window (llama.cpp's graph has no sliding window).
    "Starcoder2ForCausalLM": {"sliding_window": None},
    "NemotronForCausalLM": {"head_dim": 16, "num_key_value_heads": 2},
    # Mellum mixes sliding and full layers (llama.cpp's graph requires a sliding one).
    "MellumForCausalLM": {"layer_types": ["sliding_attention", "full_attention"]},
    # Phi-3 128k / Phi-4 shape: llama.cpp disables Phi's sliding window at this pin.
    "Phi3ForCausalLM": {"sliding_window": None},
    # Ministral 3: YaRN from 16k to 256k, as released (the shrinker's 512 would undercut it).
    "Ministral3ForCausalLM": {"sliding_window": None, "max_position_embeddings": 262144},
    # transformers' Dbrx reads attn_config.rope_theta, which its default sub-config lacks.
    "DbrxForCausalLM": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {
            "hidden_size": 64,
            "ffn_hidden_size": 128,
            "moe_num_experts": 4,
            "moe_top_k": 2,
        },
    },
    # dots.llm1 has as many key/value heads as heads (llama.cpp's dots1 graph assumes it).
    "Dots1ForCausalLM": {"num_key_value_heads": 4},
    # dots3-note's sliding layers have their own MLA geometry (released: half the heads, twice the
    # KV rank, wider no-rope heads than the indexed layers'; the same rope part and Q rank).
    "Dots3NoteForCausalLM": {
        "num_key_value_heads": 4,
        "swa_num_attention_heads": 2,
        "swa_num_key_value_heads": 2,
        "swa_q_lora_rank": 32,
        "swa_kv_lora_rank": 48,
        "swa_qk_nope_head_dim": 24,
        "swa_qk_rope_head_dim": 8,
        "swa_head_dim": 32,
        "swa_v_head_dim": 16,
        "shared_experts_intermediate_size": 32,
    },
    # Phi-2 and OLMoE have as many key/value heads as heads (llama.cpp's graphs assume it).
    "PhiForCausalLM": {"num_key_value_heads": 4, "intermediate_size": 256},  # 4 x hidden
    "OlmoeForCausalLM": {"num_key_value_heads": 4},
    "FalconH1ForCausalLM": {
        "head_dim": 16,
        "mamba_d_ssm": 128,
        "mamba_n_heads": 16,
        "mamba_d_head": 8,
        "mamba_d_state": 16,
        "mamba_chunk_size": 32,
    },
    # Mamba-style converters pad the vocabulary to a multiple of 8, as those checkpoints do.
    "FalconMambaForCausalLM": {"_vocab_multiple": 8},
    "MambaForCausalLM": {"_vocab_multiple": 8},
    "BambaForCausalLM": {"attn_layer_indices": [1], "_vocab_multiple": 8},
    # Gemma 2/3 scale queries by 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim), which
    # llama.cpp's graphs assume.
    "Gemma2ForCausalLM": {"query_pre_attn_scalar": 16},
    "Gemma3ForCausalLM": {"query_pre_attn_scalar": 16},
    # EXAONE 4.0 1.2B's layout: global attention only. (llama.cpp applies the sliding window
    # only to the 64-layer 32B layout, and 64 random f16 layers measure 0.515% with the window
    # made moot, 0.529% with it: rounding over the depth, not a mismatch.)
    "Exaone4ForCausalLM": {
        "num_hidden_layers": 2,
        "sliding_window": None,
        "layer_types": ["full_attention"] * 2,
    },
    "Mamba2ForCausalLM": {
        "num_heads": 8,
        "n_groups": 1,
        "state_size": 16,
        "chunk_size": 32,
        "_vocab_multiple": 8,
    },
    "JambaForCausalLM": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "use_mamba_kernels": False,
    },
    "GraniteMoeHybridForCausalLM": {
        "layer_types": ["linear_attention", "full_attention"],
        "_vocab_multiple": 8,
    },
    "HunYuanMoEV1ForCausalLM": {"moe_topk": [2, 2]},
    # Gemma 3n E4B's widths: the MLP 8 x hidden (2048 -> 16384). llama.cpp's activation sparsity
    # cuts at the sample std (n - 1) where transformers takes the population std, a difference
    # that falls as 1/width: 4.2% of the largest logit at width 256 (transformers made to take
    # the sample std agrees within 0.21%), about 0.07% at the released 16384.
    "Gemma3nForCausalLM": {
        "hidden_size": 128,
        "intermediate_size": [1024] * 5,
        "num_kv_shared_layers": 0,
        "hidden_size_per_layer_input": 256,  # llama.cpp's gemma3n graph fixes it
        "laurel_rank": 64,  # as released; llama.cpp assumes it
        "query_pre_attn_scalar": 16,
    },
    "Gemma4AssistantForCausalLM": {"hidden_size_per_layer_input": 0},
    "Gemma4UnifiedAssistantForCausalLM": {"hidden_size_per_layer_input": 0},
    # LFM2 mixes short-convolution and attention layers (LFM2-350M: 10 conv, 6 attention);
    # llama.cpp cannot run one without a conv layer (a zero-sized state: GGML_ASSERT(buffer)).
    "Lfm2ForCausalLM": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    # Qwen3.5 rotates a quarter of the head with interleaved M-RoPE whose sections add up to the
    # rotated half (Qwen3.5-9B: head 256, sections 11+11+10 = 32; llama.cpp asserts it): the
    # same at head 32 (4 rotated pairs).
    "Qwen3_5ForCausalLM": {"head_dim": 32, "rope_parameters": QWEN35_ROPE},
    "Qwen3_5MoeForCausalLM": {"head_dim": 32, "rope_parameters": QWEN35_ROPE},
    # ERNIE-4.5-21B-A3B: 2 shared experts of moe_intermediate_size, i.e. intermediate_size /
    # num_key_value_heads wide, which is how upstream computes the shared width.
    "Ernie4_5_MoeForCausalLM": {"moe_num_shared_experts": 2},
    # Nemotron 3 Nano's layout: Mamba-2, MoE and attention layers, no dense MLP layer (upstream
    # reads a config that has num_experts_per_tok, which transformers 5 always saves, as MoE).
    "NemotronHForCausalLM": {
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"],
        "_vocab_multiple": 8,
    },
    # Gemma 4's dense models (E2B, E4B, 31B): no experts (the shrinker's num_experts would turn
    # them on without a top-k).
    # Global layers' heads twice as wide as the sliding ones', as released (256 -> 512); E2B's
    # layout: periods of 5 sliding layers and a full one, the later layers reusing the KV of
    # the last earlier layer of their kind (E2B: 20 of 35).
    "Gemma4ForCausalLM": {
        "num_experts": None,
        "top_k_experts": None,
        "global_head_dim": 32,
        "num_hidden_layers": 12,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 2,
        "num_kv_shared_layers": 6,
    },
    # MiMo-V2-Flash rotates int(0.334 x head) dims of its 192-wide heads (64; llama.cpp needs an
    # even count): 48-wide heads rotate 16; values 2/3 as wide, as released (128).
    "MiMoV2FlashForCausalLM": {"head_dim": 48, "v_head_dim": 32},
    # gpt-oss (20b, 120b) has 64-wide heads. Its YaRN is released with truncate: false, which
    # llama.cpp ignores (it always rounds the correction range out to whole dims); how much
    # that moves depends on the head size: at head 16, 42.9% over 96 positions (proven with
    # truncate true: 0.078%), at head 64 within the tolerance (0.076%, 0.072% with it true).
    "GptOssForCausalLM": {"head_dim": 64},
    # Trinity (AFMoE) is released with muP input scaling on, which llama.cpp's graph assumes,
    # and its routed experts' weights scaled by 2.826 (route_scale; 1.0 would leave llama.cpp's
    # expert_weights_scale untested).
    "AfmoeForCausalLM": {"mup_enabled": True, "route_scale": 2.826},
    # Laguna XS.2's layout: a full-attention layer then three sliding ones, the first layer dense
    # (llama.cpp fixes that pattern whenever a sliding window is set).
    "LagunaForCausalLM": {
        "num_hidden_layers": 4,
        "layer_types": ["full_attention"] + ["sliding_attention"] * 3,
        "mlp_layer_types": ["dense"] + ["sparse"] * 3,
        "num_attention_heads_per_layer": [4] * 4,
    },
    # Qwen4-Exp (Qwen3.8-Flash-Next): the Qwen3.5 head (a quarter rotated, interleaved M-RoPE)
    # and QSA on its full-attention layers, whose sizes its config leaves unset: one key head (the
    # config requires it), 8 query heads (with 2, the relu'd scores of many tokens are exactly 0,
    # a tie each runtime breaks its own way), a budget of 32 of the 96 positions over blocks of
    # one token (see the row's note for blocks of 4); hyper-connections of a small rank; the
    # sigmoid output gate of its linear-attention layers, which llama.cpp's qwen4exp graph
    # fixes (transformers' default is hidden_act's silu).
    "Qwen4ExpForCausalLM": {
        "output_gate_type": "sigmoid",
        "head_dim": 32,
        "rope_parameters": QWEN35_ROPE,
        "indexer_n_heads": 8,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 32,
        "indexer_compress_ratio": 1,
        "hc_lowrank": 16,
    },
    # Kimi Linear 48B-A3B's full-attention layers have no query compression (q_lora_rank null;
    # llama.cpp's kimi-linear graph reads no query rank).
    "KimiLinearForCausalLM": {"q_lora_rank": None},
    # DeepSeek-V4-Flash's attention: one latent key/value head, heads in output groups (8 of 64
    # heads there), the rotated part of each head a fraction of it (64 of 512). Heads and
    # indexer keys 64 wide: llama.cpp's deepseek4 caches assert on 16- and 32-wide ones.
    "DeepseekV4ForCausalLM": {
        "num_key_value_heads": 1,
        "head_dim": 64,
        "qk_rope_head_dim": 16,
        "o_groups": 2,
        "o_lora_rank": 16,
        "index_n_heads": 4,
        "index_head_dim": 64,
    },
    # BitNet b1.58 ties its embeddings (upstream maps no lm_head). Its master weights, which
    # transformers runs ternary (online: per-tensor absmean, as upstream's converter rounds
    # them) with 8-bit activations; without a quantization_config it would run them unrounded.
    "BitNetForCausalLM": {
        "tie_word_embeddings": True,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        },
    },
}
# Families whose attention puts no 1/sqrt(head_dim) on the scores (scaling 1.0 after QK-norm):
# the builder scales their random query-norm weights by 1/sqrt(head_dim), the temperature of
# scaled attention. With unit weights the scores are sqrt(head_dim) times sharper and the tiny
# random model amplifies any rounding: transformers itself moves by 1.04% of the largest logit
# (Gemma 4) when its own weights are rounded to f16, by about 0.2% with this scale (a weight
# scale, not a shape: trained query norms are not ones either).
UNSCALED_ATTENTION = {"Gemma4ForCausalLM", "Gemma3nForCausalLM"}
# "bpe": GPT-2-style byte-level BPE (tokenizer.json); "spm": LLaMA sentencepiece (tokenizer.model);
# "spm-raw": the same without the dummy prefix space (Gemma's)
TOKENIZERS: dict[str, str] = {
    "LlamaForCausalLM": "spm",
    "Ernie4_5ForCausalLM": "spm-raw",
    "Ernie4_5_MoeForCausalLM": "spm-raw",
    "GemmaForCausalLM": "spm-raw",
    "Gemma4ForCausalLM": "spm-raw",
    "Gemma4AssistantForCausalLM": "spm-raw",
    "Gemma4UnifiedAssistantForCausalLM": "spm-raw",
    "Gemma3nForCausalLM": "spm-raw",
    "JambaForCausalLM": "spm",
    "MiniCPM3ForCausalLM": "spm",
    "Phi3ForCausalLM": "spm",
    "NemotronForCausalLM": "spm",
    "Gemma2ForCausalLM": "spm-raw",
    "Gemma3ForCausalLM": "spm-raw",
}
# What the table says about a row's shape, where an override narrows what it proves.
NOTES: dict[str, str] = {
    "Starcoder2ForCausalLM": "no sliding window (llama.cpp's starcoder2 graph has none)",
    "Qwen3MoeForCausalLM": "norm_topk_prob true, as released (llama.cpp always renormalises)",
    "MistralForCausalLM": "no sliding window (v0.2+ shape; llama.cpp's llama graph has none)",
    "MixtralForCausalLM": "no sliding window (as released; llama.cpp's llama graph has none)",
    "Ministral3ForCausalLM": "no sliding window; YaRN 16k -> 256k",
    "Phi3ForCausalLM": "no sliding window (128k / Phi-4 shape): llama.cpp disables Phi's at this pin",
    "Gemma2ForCausalLM": "sliding window 32 and soft-capping exercised",
    "Gemma3ForCausalLM": "5 sliding layers (window 32) + 1 full, as llama.cpp fixes the pattern",
    "Gemma3nForCausalLM": "E4B's widths (MLP 8 x hidden); query norm at 1/sqrt(head_dim); "
    "llama.cpp's sparsity cutoff takes the sample std (n - 1), transformers the population "
    "std: 4.2% at MLP width 256",
    "Gemma4ForCausalLM": "per-layer inputs, proportional rope on full layers (head 32), the "
    "last 6 of 12 layers sharing KV; query norm at 1/sqrt(head_dim) (no attention scaling)",
    "BitNetForCausalLM": "master weights, run ternary by transformers (online quantization)",
    "HYV4ForCausalLM": "rotated dims laid out as transformers rotates them (halves); upstream "
    "keeps the release's rows for llama.cpp's adjacent pairs, which it says the reference uses",
    "Exaone4ForCausalLM": "EXAONE 4.0 1.2B layout (global attention only); the 32B's 64-layer "
    "hybrid measures 0.515-0.529% (f16 rounding over 64 random layers)",
    "AfmoeForCausalLM": "route_scale 2.826, as released; a plain random draw measured 8.4%: "
    "llama.cpp's f16 KV cache flipped a near-tie expert choice (a 5e-4 gap) of its router, "
    "exact (1e-6) with an f32 cache",
    "GptOssForCausalLM": "heads 64 wide, as released: llama.cpp ignores YaRN's truncate: false "
    "(rotation angles off by up to 0.02 rad at position 96, growing with position)",
    "Dots3NoteForCausalLM": "an indexed (DSA) and a sliding MLA layer, each kind its own "
    "geometry; the indexer's top-k (2048, as released) keeps all 96 positions",
    "Qwen4ExpForCausalLM": "sigmoid output gate in the linear-attention layers, as llama.cpp's "
    "graph fixes it (a silu-gated checkpoint converts but measures 70% off); QSA chooses 32 of "
    "the 96 positions in blocks of 1: with blocks of 4 the f32 file is 11.5% off, as llama.cpp "
    "takes budget + 3 tokens by block score (where the incomplete tail is shorter than 3, tokens "
    "of one more block) and transformers whole blocks plus the tail (read in the pinned "
    "sources); no PLE layer",
    "NemotronHForCausalLM": "Nemotron 3 (MoE) layout; a dense Nemotron-H saved by transformers 5 "
    "is read as MoE by upstream (num_experts_per_tok is always saved)",
}
# The cause found for a row that stays unproven, where it is upstream's (read in the pinned
# sources, and checked by hand where the row can be built without the named difference: then
# it comes out proven). Appended to the row's measured failure, which still decides its status.
UPSTREAM_CAUSES: dict[str, str] = {
    "MellumForCausalLM": "llama.cpp's mellum graph ropes sliding layers with the full layers' "
    "base (Mellum2: 500000) instead of rope.freq_base_swa (10000); proven with equal bases",
    "BitNetForCausalLM": "llama.cpp's bitnet graph runs SiLU in the FFN (transformers: "
    "hidden_act, relu2 as released) and full-precision activations (transformers: per-token "
    "8-bit absmax); with hidden_act silu the f16 file is 2.84% off, and 0.092% off transformers "
    "with ternary weights and unrounded activations",
    "KimiLinearForCausalLM": "llama.cpp's kimi-linear graph l2-normalises KDA queries and keys "
    "with rms_norm_eps (1e-5 as released) where transformers uses 1e-6, which this tiny "
    "model's small q/k feel (dense layers only: 0.59%); with rms_norm_eps 1e-6 the f32 file "
    "is within 0.009% and f16 rounding flips near-tie choices of the random router (7.7%)",
}
# Rows whose weights are written as f16 values (checkpoints.as_f16_values), so that the f16
# file's weights are transformers' own: a random router's near-tie expert choice is then flipped
# by nothing but the runtimes' arithmetic. (These are MoE rows: the note gives their routers'
# smallest top-k margin and largest gate, measured in transformers.)
F16_WEIGHTS = {
    "DbrxForCausalLM",
    "ExaoneMoeForCausalLM",
    "MiMoV2FlashForCausalLM",
    "MiniMaxM2ForCausalLM",
    "NemotronHForCausalLM",
}
# Rows whose routers are redrawn until their top-k choices on the positions measured are decisive
# (routers.make_decisive; the row's note gives the margin and the largest gate). After
# F16_WEIGHTS, EXAONE MoE and MiniMax-M2 still flipped a near-tie choice on llama.cpp's f16
# activations; the others came out proven with margins of 0.000-0.001 of the scores' spread,
# which another CPU's arithmetic could flip.
DECISIVE_ROUTERS = set(F16_WEIGHTS) | {"AfmoeForCausalLM"}
# Why a family cannot be built here, where that is known: the row is still attempted, and only
# if it fails does this reason stand as its status (with the first error).
CANNOT_BUILD: dict[str, str] = {
    "Gemma4AssistantForCausalLM": "a Gemma 4 drafter: its forward takes the backbone model's "
    "input embeddings and shared key/value states, never token ids, so it has no logits of its "
    "own to compare (and its config nests a backbone config this builder does not shrink)",
    "Gemma4UnifiedAssistantForCausalLM": "a Gemma 4 drafter that shares the cache of a backbone "
    "it does not contain",
    "HunYuanMoEV1ForCausalLM": "its converter reads the tiktoken ranks of HunYuan's own "
    "tokenizer (remote code), and writes BOS id 127959 of that vocabulary",
}
# Special tokens a family's converter looks up by name, and the one that is its EOS (None: the
# tokenizer's own).
GLM_SPECIALS = (
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|startoftext|>",
)
SPECIALS: dict[str, tuple[tuple[str, ...], str | None]] = {
    arch: (GLM_SPECIALS, "<|endoftext|>")
    for arch in (
        "GlmForCausalLM",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4MoeLiteForCausalLM",
        "GlmMoeDsaForCausalLM",
        "SolarOpenForCausalLM",  # converted as GLM-4 MoE
    )
}
# dots3-note's converter marks its end-of-turn token, which it looks up by name, as EOT.
SPECIALS["Dots3NoteForCausalLM"] = (("<|endofassistant|>",), None)
# Families whose tokenizer adds BOS (their converters check it).
ADDS_BOS = {"DeepseekV32ForCausalLM"}
