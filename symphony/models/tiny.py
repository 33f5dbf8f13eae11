"""Tiny randomly initialised decoder models and a byte-level tokenizer: offline, instant, exact on CPU.

Dimensions are multiples of 32 so bitsandbytes' CPU 4-bit kernels accept them.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config

TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-mistral")

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=257,
    tie_word_embeddings=False,
)


def tiny_config(name: str):
    if name == "tiny-llama":
        return LlamaConfig(**_COMMON)
    if name == "tiny-qwen2":
        return Qwen2Config(**_COMMON)
    if name == "tiny-mistral":
        return MistralConfig(**_COMMON, sliding_window=None)
    raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(TINY_MODELS)}")


def tiny_model(name: str = "tiny-llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A seeded random model: the same name and seed always give the same weights."""
    cfg = tiny_config(name)
    cfg._attn_implementation = "sdpa"
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (256 byte tokens + ChatML specials): any text round-trips, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|im_end|>", "<|im_start|>"]  # ids 256, 257, 258
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf
