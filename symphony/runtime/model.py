"""`SymphonyModel`: the three-memory forward API, for code written against Titans-style models.

    model = SymphonyModel.from_config(load_config("smollm2-135m", [...]))
    logits, surprise, knowledge = model(input_ids, attention_mask=mask, task_ids=task_ids)

`forward(input_ids [B, S], attention_mask [B, S] | None, position_ids [B, S] | None, task_ids [B] | None)`
returns a `SymphonyOutput` (a named tuple, so it unpacks as above) of

- `logits` [B, S, V] (the model's dtype): next-token logits at every position, exactly what the streaming
  engine decodes from (the LM head's logits; log-probabilities of the pointer-generator mix once a trained
  copy head's gate is open). With flags off and a cache budget larger than the input they are the base
  model's logits.
- `surprise` [B, S] float32: the per-token surprisal -log p(x_t | x_<t) in nats under those logits (the
  rarity oracle's signal, `symphony.runtime.salience.surprisal`); 0 for each row's first token.
- `knowledge_attention` [B, S, K] float32, K = `model.knowledge_slots` = persistent tokens + `cache.ledger`
  (0 for the `sinks` and `full` policies): the last decoder layer's attention probabilities, averaged over
  its query heads, that each query token puts on the cache's knowledge slots. Columns 0..P-1 are the
  persistent-memory slots of the row's task (in order); columns P..K-1 are the ledger region's slots in
  stream order, as the cache held them when the token's segment was fed (the slots between the sinks and
  the recent window, `BoundedCache.regions()`'s ledger; unused columns are 0 while the ledger is not full).
  Each row sums to at most 1 (the rest is on the sinks, the recent window and the token itself); it would
  sum to 1 exactly if every slot the query can see were a knowledge slot.

How: each batch row is its own stream (the bounded cache is per stream). It starts with the task's
persistent tokens (when the model has persistent memory), then is fed `cache.segment_len` tokens at a time
through `StreamingEngine.forward`, compacting after each segment, so any S runs at constant cache memory
(the returned tensors themselves are O(S·V)). The knowledge attention is recomputed from the last layer's
input (a forward pre-hook captures its hidden states and RoPE cos/sin): q = q_proj (+ q_norm) + rotate-half
RoPE, against the keys the cache holds after the forward, causal, softmax in float32. It assumes plain
causal attention in that layer: sliding-window masks, logit soft-capping and learned attention sinks are
not modelled (Llama, Qwen2/2.5/3, Mistral without sliding window, SmolLM are exact).

- `attention_mask`: 1 = token, 0 = padding (left, right or anywhere): padded tokens are skipped; their
  outputs are 0.
- `position_ids`: accepted for API compatibility only. The cache assigns positions itself (a slot's index
  is its RoPE position; persistent slots come first, and compaction re-rotates kept keys), so positions
  cannot be chosen by the caller. Given position ids must increase by exactly 1 over each row's
  non-padding tokens (what a causal LM would use anyway; the starting value is ignored); anything else
  raises ValueError instead of being silently ignored.
- `task_ids`: the persistent-memory task per row (default 0; must be < the model's `num_tasks`; a model
  without persistent memory only has task 0).

Gradients flow only when `model.engine.grad_enabled` is set (as the trainer does); by default `forward`
runs without a graph, like the engine's inference path.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from symphony.config import CacheConfig, SalienceConfig
from symphony.runtime.cache import BoundedCache
from symphony.runtime.engine import StreamingEngine, engine_from_config
from symphony.runtime.salience import surprisal
from symphony.runtime.stream import Stream


class SymphonyOutput(NamedTuple):
    logits: Tensor  # [B, S, V]
    surprise: Tensor  # [B, S] float32, nats; 0 for the first token and padding
    knowledge_attention: Tensor  # [B, S, K] float32, K = persistent tokens + ledger slots


class _Probe:
    """Captures the last decoder layer's attention input during one forward and recomputes its attention
    probabilities over the cache's slots."""

    def __init__(self, attn: nn.Module, layer_idx: int):
        self.attn, self.layer_idx = attn, layer_idx
        self.hidden: Tensor | None = None
        self.cos_sin: tuple[Tensor, Tensor] | None = None

    def hook(self, _module, args, kwargs):
        self.hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        pe = kwargs.get("position_embeddings")
        if pe is None and len(args) > 1:
            pe = args[1]
        self.cos_sin = pe

    def probs(self, cache: BoundedCache, before: int) -> Tensor:
        """[q, N] attention probabilities (mean over heads) of this segment's q tokens over the N slots the
        cache holds after the forward; the segment's tokens sit at slots before..before+q-1."""
        if self.hidden is None or self.cos_sin is None:
            raise RuntimeError("the knowledge-attention probe saw no attention call with RoPE position embeddings")
        a = self.attn
        head_dim = int(getattr(a, "head_dim"))
        h = self.hidden.detach()
        q = a.q_proj(h)  # [1, q, H*D]
        norm = getattr(a, "q_norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() != head_dim:
            q = norm(q)  # a norm over the whole projection (OLMo2 style)
            norm = None
        q = q.view(*h.shape[:-1], -1, head_dim)
        if norm is not None:
            q = norm(q)  # a per-head norm (Qwen3 style)
        q = q.transpose(1, 2).float()  # [1, H, q, D]
        cos, sin = (t.detach().float()[:, None] for t in self.cos_sin)  # [1, 1, q, rot]
        rot = cos.shape[-1]
        qr, rest = q[..., :rot], q[..., rot:]
        half = rot // 2
        qr = qr * cos + torch.cat([-qr[..., half:], qr[..., :half]], dim=-1) * sin
        q = torch.cat([qr, rest], dim=-1)
        keys = cache.layers[self.layer_idx].keys.detach().float()  # [1, kvH, N, D]
        groups = q.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(groups, dim=1)
        scores = (q @ keys.transpose(-1, -2)) * float(getattr(a, "scaling", head_dim ** -0.5))  # [1, H, q, N]
        n_q, n = scores.shape[-2], scores.shape[-1]
        slot = torch.arange(n, device=scores.device)
        seen = slot[None, :] <= (before + torch.arange(n_q, device=scores.device))[:, None]
        scores = scores.masked_fill(~seen, float("-inf"))
        return scores.softmax(dim=-1).mean(dim=1)[0]  # [q, N]


class SymphonyModel(nn.Module):
    """A loaded HF causal LM (with its Symphony memories) behind the streaming engine, with the three-memory
    `forward` of the module docstring."""

    def __init__(self, model: nn.Module, tokenizer=None, cache_cfg: CacheConfig | None = None,
                 salience_cfg: SalienceConfig | None = None, policy: str | None = None,
                 engine: StreamingEngine | None = None):
        super().__init__()
        self.engine = engine or StreamingEngine(model, tokenizer, cache_cfg or CacheConfig(), salience_cfg,
                                                policy=policy)
        self.model = self.engine.model  # registered: .parameters(), .to() and state_dict() see the base + memories

    @classmethod
    def from_config(cls, cfg, policy: str | None = None, progress: bool = False) -> "SymphonyModel":
        """Load `cfg.model` (and the trained memories of `cfg.memory.checkpoint`) via `engine_from_config`."""
        eng = engine_from_config(cfg, policy=policy, progress=progress)
        return cls(eng.model, engine=eng)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def num_tasks(self) -> int:
        return self.engine.num_tasks

    @property
    def knowledge_slots(self) -> int:
        """K of `knowledge_attention`: persistent tokens + ledger slots (0 for the sinks/full baselines)."""
        eng = self.engine
        eng._find_memory()
        return eng.cache_policy.knowledge_slots(eng.cache_cfg, eng.persistent_tokens)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                task_ids: Tensor | int | None = None) -> SymphonyOutput:
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {list(ids.shape)}")
        b, s = ids.shape
        mask = torch.ones(b, s, dtype=torch.bool) if attention_mask is None else \
            torch.as_tensor(attention_mask).reshape(b, s).cpu().bool()
        tasks = self._task_ids(task_ids, b)
        self._check_positions(position_ids, mask)
        k = self.knowledge_slots
        rows = []
        with torch.set_grad_enabled(self.engine.grad_enabled):
            for i in range(b):
                rows.append(self._row(ids[i][mask[i]].cpu().long(), tasks[i], k))
        dev = self.engine.device
        v = next((r[0].shape[-1] for r in rows if r[0] is not None), None)
        if v is None:  # nothing but padding: the vocabulary size from the output layer
            v = self.model.get_output_embeddings().weight.shape[0]
        dtype = next((r[0].dtype for r in rows if r[0] is not None), self.model.dtype)
        logits = torch.zeros(b, s, v, dtype=dtype, device=dev)
        surprise = torch.zeros(b, s, dtype=torch.float32, device=dev)
        knowledge = torch.zeros(b, s, k, dtype=torch.float32, device=dev)
        for i, (lg, sp, kn) in enumerate(rows):
            if lg is None:
                continue
            where = mask[i].to(dev)
            logits[i, where] = lg.to(dtype)
            surprise[i, where] = sp.to(dev)
            knowledge[i, where] = kn.to(dev)
        return SymphonyOutput(logits, surprise, knowledge)

    def _task_ids(self, task_ids, b: int) -> list[int]:
        if task_ids is None:
            return [0] * b
        t = torch.as_tensor(task_ids).reshape(-1).tolist()
        if len(t) == 1:
            t = t * b
        if len(t) != b:
            raise ValueError(f"task_ids must hold one task per batch row ({b}); got {len(t)}")
        return [self.engine.check_task(int(x)) for x in t]

    @staticmethod
    def _check_positions(position_ids, mask: Tensor) -> None:
        if position_ids is None:
            return
        pos = torch.as_tensor(position_ids).cpu().long()
        if pos.dim() == 1:
            pos = pos[None].expand(mask.shape[0], -1)
        if tuple(pos.shape) != tuple(mask.shape):
            raise ValueError(f"position_ids must be [batch, seq] like input_ids {list(mask.shape)}; "
                             f"got {list(pos.shape)}")
        for i in range(mask.shape[0]):
            p = pos[i][mask[i]]
            if p.numel() > 1 and not bool((p[1:] - p[:-1] == 1).all()):
                raise ValueError("position_ids must increase by 1 over each row's tokens: the bounded cache assigns "
                                 "positions itself (a slot's index is its RoPE position), so other positions cannot "
                                 "be honoured; pass position_ids=None")

    def _row(self, ids: Tensor, task_id: int, k: int):
        """One row as its own stream: (logits [n, V], surprise [n], knowledge [n, K]); Nones when n == 0."""
        eng = self.engine
        if ids.numel() == 0:
            return None, None, None
        stream = eng.new_stream(task_id)
        seg = eng.cache_cfg.segment_len
        logits, surprise, knowledge = [], [], []
        prev = None
        for start in range(0, ids.numel(), seg):
            chunk = ids[start:start + seg]
            before = stream.occupied
            with self._probe(k) as probe:
                out = eng.forward(stream, chunk, all_logits=True)
            lg = out.logits
            if out.head_last is not None and not eng._copy_active():
                # the full forward's last row (the engine keeps generate()'s row for decoding; they differ
                # only by float rounding): the logits are then exactly the base model's full-sequence logits
                lg = lg.clone() if lg.requires_grad else lg
                lg[-1] = out.head_last.to(lg.dtype)
            logits.append(lg)
            surprise.append(surprisal(chunk, lg, prev))
            prev = lg[-1].detach()
            knowledge.append(self._knowledge(stream, probe, before, len(chunk), k))
            eng.compact(stream)
        return torch.cat(logits), torch.cat(surprise), torch.cat(knowledge)

    @contextmanager
    def _probe(self, k: int):
        if k == 0:
            yield None
            return
        from symphony.models.info import decoder_layers

        layers = decoder_layers(self.model)
        attn = getattr(layers[-1], "self_attn", None)
        if attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "head_dim"):
            raise ValueError(f"knowledge attention needs a Llama-style `self_attn` (q_proj, head_dim) in the last "
                             f"decoder layer of {type(self.model).__name__}")
        probe = _Probe(attn, int(getattr(attn, "layer_idx", len(layers) - 1)))
        handle = attn.register_forward_pre_hook(probe.hook, with_kwargs=True)
        try:
            yield probe
        finally:
            handle.remove()

    def _knowledge(self, stream: Stream, probe: _Probe | None, before: int, q: int, k: int) -> Tensor:
        """[q, K]: attention on the persistent slots, then on the ledger region's slots (zero-padded)."""
        out = torch.zeros(q, k, dtype=torch.float32)
        if probe is None or not isinstance(stream.cache, BoundedCache):
            return out
        probs = probe.probs(stream.cache, before).cpu()
        cols = knowledge_slot_indices(stream, before)
        out[:, : cols.numel()] = probs[:, cols]
        return out


def knowledge_slot_indices(stream: Stream, before: int) -> Tensor:
    """Cache slots that count as knowledge for a segment fed when the cache held `before` slots: the persistent
    slots 0..P-1, then the ledger region (between the sinks and the recent window) in stream order."""
    p, b = stream.persistent, stream.cache.budget
    lo = min(b.sinks, before)
    hi = min(max(before - b.window, lo), lo + b.ledger)
    return torch.cat([torch.arange(p), torch.arange(lo, hi)])
