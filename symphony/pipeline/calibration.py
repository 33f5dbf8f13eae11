"""Calibration statistics of a frozen model: per-layer hidden-state and MLP-output norms on real text.

Later phases use them to scale memory adapters to the size of the signal they join.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from symphony.corpus import load_text, token_stream
from symphony.models.info import decoder_layers


@torch.no_grad()
def calibration_stats(model, tokenizer, text_source: str, n_tokens: int, segment_len: int, progress: bool = True) -> dict:
    ids = token_stream(tokenizer, load_text(text_source), n_tokens)
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    mlp_sum = torch.zeros(len(layers), dtype=torch.float64)
    hid_sum = torch.zeros(len(layers) + 1, dtype=torch.float64)
    count = 0

    def hook(i):
        def fn(_module, _inp, out):
            mlp_sum[i] += out.float().norm(dim=-1).sum().double().cpu()
        return fn

    handles = [layer.mlp.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        starts = range(0, len(ids), segment_len)
        for s in tqdm(starts, desc="calibration", unit="seg", disable=not progress):
            chunk = torch.tensor([ids[s : s + segment_len]], device=device)
            out = model(input_ids=chunk, output_hidden_states=True, use_cache=False)
            for j, h in enumerate(out.hidden_states):
                hid_sum[j] += h.float().norm(dim=-1).sum().double().cpu()
            count += chunk.shape[1]
    finally:
        for h in handles:
            h.remove()
    return {
        "text": text_source,
        "tokens": count,
        "segment_len": segment_len,
        # index 0: embedding output; index i: output of decoder layer i-1, except the last entry, which
        # transformers reports after the final norm (what the LM head reads)
        "hidden_norm_mean": [round(float(x) / count, 6) for x in hid_sum],
        "mlp_out_norm_mean": [round(float(x) / count, 6) for x in mlp_sum],
    }
