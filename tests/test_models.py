"""Model loading: tiny random models, local-path errors, offline hub ids, non-causal refusals, model facts."""
from __future__ import annotations

import time

import pytest
import torch

from symphony.config import ModelConfig, load_config
from symphony.errors import SymphonyError
from symphony.models import (
    context_window,
    freeze,
    kv_bytes_per_token,
    load_config_only,
    load_model,
    parameter_counts,
    resolve_source,
)
from symphony.models.tiny import TINY_MODELS, byte_tokenizer, tiny_config, tiny_model

EXPECTED_ARCH = {"tiny-llama": "LlamaForCausalLM", "tiny-qwen2": "Qwen2ForCausalLM",
                 "tiny-mistral": "MistralForCausalLM"}


# --- tiny models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_load_offline_and_fast(name):
    start = time.perf_counter()
    lm = load_model(ModelConfig(name=name))
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"{name} took {elapsed:.1f} s"
    assert type(lm.model).__name__ == EXPECTED_ARCH[name]
    assert lm.source.kind == "tiny" and lm.source.location == name
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert not lm.model.training  # eval mode
    ids = torch.tensor([lm.tokenizer("hello world").input_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], lm.model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_are_deterministic_by_seed(name):
    a = tiny_model(name, seed=0).state_dict()
    b = tiny_model(name, seed=0).state_dict()
    c = tiny_model(name, seed=1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_load_model_seed_controls_weights():
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    outs = []
    for seed in (0, 0, 1):
        lm = load_model(ModelConfig(name="tiny-llama"), seed=seed)
        with torch.no_grad():
            outs.append(lm.model(input_ids=ids).logits)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny_model("tiny-llama", seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_tiny_model_dtype():
    lm = load_model(ModelConfig(name="tiny-qwen2", dtype="bfloat16"))
    assert lm.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())


def test_tiny_models_refuse_quantisation():
    with pytest.raises(SymphonyError, match="not quantised"):
        load_model(ModelConfig(name="tiny-llama", quantization="4bit"))


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "Grüße, 世界! \n\ttabs and emoji 🎻"
    ids = tok(text, add_special_tokens=False).input_ids
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(["<|bos|>", "<|im_end|>", "<|im_start|>"]) == [256, 257, 258]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_cuda_request_without_gpu_is_one_line_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(SymphonyError, match="no CUDA GPU"):
        load_model(ModelConfig(name="tiny-llama", device="cuda"))


# --- bad model names and paths ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["./does/not/exist", "/definitely/not/here", "~/nope-symphony-model",
                                  "missing.gguf"])
def test_missing_path_errors(name):
    with pytest.raises(SymphonyError, match="model path not found"):
        load_model(ModelConfig(name=name))


def test_directory_without_config_json_errors(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SymphonyError, match="no config.json") as ei:
        load_model(ModelConfig(name=str(tmp_path)))
    assert str(tmp_path) in str(ei.value)


def test_name_that_is_neither_path_nor_hub_id_errors():
    with pytest.raises(SymphonyError, match="neither a local path nor a hub id") as ei:
        resolve_source("just-a-word")
    assert "tiny-llama" in str(ei.value)


def test_hub_id_while_offline_is_quick_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SymphonyError) as ei:
        load_model(ModelConfig(name="symphony-test-nobody/no-such-model-xyz"))
    elapsed = time.perf_counter() - start
    msg = str(ei.value)
    assert "no network" in msg
    assert "symphony-test-nobody/no-such-model-xyz" in msg
    assert "\n" not in msg
    assert elapsed < 10, f"offline failure took {elapsed:.1f} s"


def test_hub_id_resolves_without_touching_the_network():
    src = resolve_source("Qwen/Qwen2.5-1.5B-Instruct")
    assert (src.kind, src.location) == ("hub", "Qwen/Qwen2.5-1.5B-Instruct")


def test_encoder_decoder_model_is_refused(tmp_path):
    from transformers import T5Config

    T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(SymphonyError, match="not a decoder-only causal LM") as ei:
        load_model(ModelConfig(name=str(tmp_path)))
    assert "'t5'" in str(ei.value)


def test_non_causal_model_type_is_refused(tmp_path):
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=32, patch_size=16).save_pretrained(tmp_path)
    with pytest.raises(SymphonyError, match="not a decoder-only causal LM"):
        load_model(ModelConfig(name=str(tmp_path)))


def test_bert_encoder_is_refused_even_though_it_has_an_lm_head_class(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(SymphonyError, match="not a decoder-only causal LM"):
        load_model(ModelConfig(name=str(tmp_path)))


def test_local_checkpoint_directory_loads(tmp_path):
    """A regular transformers checkpoint dir (as save_pretrained writes it) loads as kind 'dir'."""
    model = tiny_model("tiny-qwen2", seed=3)
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = load_model(ModelConfig(name=str(tmp_path)))
    assert lm.source.kind == "dir"
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(lm.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_directory_with_config_but_no_weights_errors(tmp_path):
    tiny_config("tiny-llama").save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SymphonyError, match="cannot load the model at"):
        load_model(ModelConfig(name=str(tmp_path)))


# --- freezing and model facts -----------------------------------------------------------------------

def test_freeze_leaves_nothing_trainable():
    model = tiny_model("tiny-llama")
    n_params = sum(p.numel() for p in model.parameters())
    assert any(p.requires_grad for p in model.parameters())
    assert freeze(model) == n_params
    assert not any(p.requires_grad for p in model.parameters())
    assert parameter_counts(model)["trainable"] == 0


def test_kv_bytes_per_token_by_hand(tiny_cfg):
    config = tiny_config(tiny_cfg.model.name)
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    assert (layers, kv_heads, head_dim) == (2, 2, 16)
    for dtype_bytes in (4, 2, 1):
        expected = 2 * layers * kv_heads * head_dim * dtype_bytes
        assert kv_bytes_per_token(config, dtype_bytes) == expected
    assert kv_bytes_per_token(config, 4) == 512


def test_kv_bytes_uses_attention_heads_without_gqa():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=None, num_hidden_layers=3)
    assert kv_bytes_per_token(config, 2) == 2 * 3 * 8 * 8 * 2


def test_context_window_of_tiny():
    assert context_window(tiny_config("tiny-llama")) == 512


def test_load_config_only_for_tiny_and_dir(tmp_path):
    src = resolve_source("tiny-mistral")
    assert load_config_only(src).model_type == "mistral"
    tiny_config("tiny-qwen2").save_pretrained(tmp_path)
    assert load_config_only(resolve_source(str(tmp_path))).model_type == "qwen2"


def test_parameter_counts_total_is_sum_of_unique_params(tiny_loaded):
    model = tiny_loaded.model
    counts = parameter_counts(model)
    unique = {id(p): p for p in model.parameters()}
    assert counts["total"] == sum(p.numel() for p in unique.values())
    kinds = {k: v for k, v in counts.items() if k not in ("total", "trainable")}
    assert sum(kinds.values()) == counts["total"]
    assert set(kinds) <= {"embedding", "attention", "mlp", "norm", "other"}
    assert counts["embedding"] == 2 * 512 * 64  # untied input embedding + lm_head


def test_parameter_counts_count_tied_weights_once():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("tiny-llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # parameters() dedups
    assert counts["embedding"] == 512 * 64
    assert counts["trainable"] == counts["total"]


# --- the embedded model (real weights) --------------------------------------------------------------

@pytest.mark.real_model
def test_embedded_smollm2_answers_paris(embedded_model_dir):
    assert (embedded_model_dir / "config.json").is_file()
    cfg = load_config("smollm2-135m")
    start = time.perf_counter()
    lm = load_model(cfg.model, seed=cfg.seed)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"loading the converted embedded model took {elapsed:.1f} s"
    assert lm.source.kind == "embedded"
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    tok = lm.tokenizer
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = lm.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
