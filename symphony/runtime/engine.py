"""The streaming engine: chunked prefill through a bounded cache, salience scoring, decoding.

Peak memory depends on the cache budget and `segment_len`, never on the input length: the
input is fed `segment_len` tokens at a time and the cache is compacted after every segment.
Which cache a stream gets is its policy's (`policies`); questions, answers and chat sessions
are built on top in `chat`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from symphony.config import CacheConfig, SalienceConfig
from symphony.memory.inject import adapters_off, memory_adapters, pointer_heads, retriever_of
from symphony.memory.persistent import persistent_memory
from symphony.memory.pointer import RouterScorer
from symphony.models.compat import with_cache
from symphony.models.info import check_cache_in_context
from symphony.runtime import chat
from symphony.runtime.cache import BoundedCache
from symphony.runtime.chat_format import ChatFormat
from symphony.runtime.copying import CopyRule
from symphony.runtime.policies import CachePolicy, get_policy
from symphony.runtime.stream import Stream


@dataclass
class SegmentOutput:
    logits: torch.Tensor  # [q, V] next-token logits at every position of the segment
    hidden: torch.Tensor | None  # [q, D] final (normed) hidden states, when computed
    positions: torch.Tensor  # [q] stream positions of the segment's tokens
    # [V] the LM head's row for the last token as a full forward computes it (logits[-1] is the generate()
    # path's `logits_to_keep=1` row, equal up to float rounding); None when only the last row was computed
    head_last: torch.Tensor | None = None


class StreamingEngine:
    def __init__(self, model, tokenizer, cache_cfg: CacheConfig, salience_cfg: SalienceConfig | None = None,
                 policy: str | None = None, progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.cache_cfg = cache_cfg
        self.salience_cfg = salience_cfg or SalienceConfig()
        self.policy = policy or cache_cfg.policy  # its name; `cache_policy` is the registered policy
        get_policy(self.policy)  # an unknown name fails here, not at the first stream
        self.progress = progress
        self.grad_enabled = False  # the trainer turns it on: memory writes and reads then keep their graph
        self._persistent = None
        self.device = next(model.parameters()).device
        self._find_memory()

    @property
    def cache_policy(self) -> CachePolicy:
        """The registered policy named `policy`: it builds this engine's streams."""
        return get_policy(self.policy)

    def _find_memory(self) -> None:
        """The model's memory adapters and pointer heads. Only a policy that `uses_memory` (symphony) uses them:
        the baselines run the bare base model even when the model carries adapters."""
        policy = self.cache_policy
        mine = policy.uses_memory
        self._adapters = memory_adapters(self.model) if mine else []
        self._pointer = pointer_heads(self.model) if mine else None
        self._retriever = retriever_of(self.model) if mine else None
        self._persistent = persistent_memory(self.model) if mine else None
        if policy.bounded:  # positions must stay inside the trained context, persistent slots included
            check_cache_in_context(self.cache_cfg, self.model.config, self.persistent_tokens)

    # -- streams -------------------------------------------------------------------------------
    @property
    def persistent_tokens(self) -> int:
        """Cache slots the persistent memory holds in every stream (0 without one, or for a baseline policy)."""
        return self._persistent.tokens if self._persistent is not None else 0

    @property
    def num_tasks(self) -> int:
        """Persistent-memory tasks of the model (1 without persistent memory: only task 0 exists)."""
        pm = persistent_memory(self.model)
        return pm.num_tasks if pm is not None else 1

    @property
    def capacity(self) -> int | None:
        """Slots a compacted cache holds: sinks + ledger + window, plus the persistent-memory slots; None when
        the policy is unbounded."""
        return self.cache_policy.capacity(self.cache_cfg, self.persistent_tokens)

    def check_task(self, task_id: int) -> int:
        """`task_id` if the model has it; SymphonyError (one line) otherwise."""
        from symphony.errors import SymphonyError

        task_id = int(task_id)
        pm = persistent_memory(self.model)
        if pm is None and task_id != 0:
            raise SymphonyError(f"task id {task_id} needs persistent memory, which this model has none of (only task "
                                "0); load a checkpoint trained with memory.persistent_tokens > 0")
        if pm is not None and not 0 <= task_id < pm.num_tasks:
            raise SymphonyError(f"task id {task_id} is out of range: this model's persistent memory has "
                                f"{pm.num_tasks} task(s), ids 0..{pm.num_tasks - 1}")
        return task_id

    def new_stream(self, task_id: int = 0) -> Stream:
        """A fresh stream: the policy's empty cache and, with memory adapters, fresh (empty) memory states. With
        persistent memory (`symphony` policy), task `task_id`'s persistent tokens are fed first and fill the
        cache's first slots for the stream's whole life."""
        task_id = self.check_task(task_id)
        self._find_memory()  # a model may have been injected since the engine was made
        stream = self.cache_policy.make_stream(self, self.persistent_tokens)
        if self._adapters:
            stream.memory = [(None, None)] * len(self._adapters)
            stream.paged = tuple((i, a.layer_idx) for i, a in enumerate(self._adapters)
                                 if getattr(a.memory, "num_pages", 1) > 1)
        if self._persistent is not None:
            self._prefill_persistent(stream, task_id)
        if self._pointer is not None and stream.scorer is not None:  # the learned router refines the oracle
            stream.scorer = RouterScorer(self._pointer.router, base=stream.scorer)
        return stream

    def _prefill_persistent(self, stream: Stream, task_id: int) -> None:
        """Feed the task's persistent embeddings into the (empty) stream: they take slots 0..P-1, which the cache
        keeps as sinks. Token ids stay -1 (nothing to copy), stream positions become -P..-1, and the stream still
        has nothing to continue from (`last_logits` None), as a fresh stream."""
        emb = self._persistent(task_id)
        w = getattr(self.model.get_input_embeddings(), "weight", None)
        dtype = w.dtype if w is not None and w.is_floating_point() else self.model.dtype  # what the table would give
        p = emb.shape[0]
        with self._memory_of(stream), torch.set_grad_enabled(self.grad_enabled):
            embeds = emb.to(device=self.device, dtype=dtype)[None]
            self.model(**with_cache(self.model, stream.cache, inputs_embeds=embeds, use_cache=True, logits_to_keep=1))
        stream.cache.positions[:p] = torch.arange(-p, 0)
        stream.cache.tokens_seen = 0
        stream.task_id, stream.persistent = task_id, p

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, stream: Stream, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """One forward over `ids` [q] (appending to the cache, no compaction). Returns logits:
        [q, V] if `all_logits`, else [V] for the last token."""
        with torch.set_grad_enabled(self.grad_enabled):
            out = self.forward(stream, ids, all_logits)
        return out.logits if all_logits else stream.last_logits

    def forward(self, stream: Stream, ids: torch.Tensor, all_logits: bool = True,
                mix_copy: bool | None = None) -> "SegmentOutput":
        """`feed`'s work, returning the segment's logits [q, V] and final hidden states [q, D] (None when not
        needed). Gradients flow when the caller enables them (training). `mix_copy`: None mixes the copy
        head in once its gate has opened (inference); the trainer passes False and mixes itself."""
        ids = ids.reshape(-1).to(self.device)
        # The next-token logits always come from the same `logits_to_keep=1` path `generate()` uses, so
        # greedy decoding matches the base model whatever the policy; the other positions' logits (for
        # salience and perplexity) are the LM head applied to the final hidden states.
        copying = self._copy_active() if mix_copy is None else mix_copy
        need_all = all_logits or stream.scorer is not None or copying
        with self._memory_of(stream):
            out = self.model(**with_cache(self.model, stream.cache, input_ids=ids[None], use_cache=True,
                                           logits_to_keep=1, output_hidden_states=need_all))
        last = out.logits[0, -1]
        hidden = out.hidden_states[-1][0] if need_all else None
        head_last = None
        if need_all:
            logits = self.model.get_output_embeddings()(hidden)
            head_last = logits[-1].clone()
            logits[-1] = last
        else:
            logits = out.logits[0]
        positions = torch.arange(stream.tokens_seen, stream.tokens_seen + ids.numel())
        feats = (self._retriever.hidden_of(out.hidden_states)
                 if need_all and self._retriever is not None and stream.recall is not None else None)
        if stream.scorer is not None and isinstance(stream.cache, BoundedCache):
            scores = stream.scorer(ids, logits, stream.last_logits, positions, hidden=hidden)
            stream.cache.record(ids, scores, feats)
        elif isinstance(stream.cache, BoundedCache):
            stream.cache.record(ids)
        if copying and isinstance(stream.cache, BoundedCache):
            rows = slice(None) if all_logits else slice(-1, None)
            mixed = self.copy_logprobs(stream.cache, hidden[rows], logits[rows], positions[rows])
            logits = logits.clone()
            logits[rows] = mixed.to(logits.dtype)
            last = mixed[-1]
        stream.tokens_seen += ids.numel()
        stream.last_logits = last.detach().float()
        return SegmentOutput(logits, hidden, positions, head_last)

    @contextmanager
    def _memory_of(self, stream: Stream):
        """Install the stream's memory states in the adapters for one forward (each stream carries its own),
        and take them back after; the baselines run with every adapter switched off."""
        if not self._adapters:
            with adapters_off(self.model):
                yield
            return
        if stream.memory is None or len(stream.memory) != len(self._adapters):
            raise ValueError("this stream was made before the model's memory adapters changed; use new_stream()")
        deferred = isinstance(stream.cache, BoundedCache)  # the memory stores what the cache evicts
        for adapter, (state, pending) in zip(self._adapters, stream.memory):
            adapter.state, adapter.pending, adapter.defer_writes = state, pending, deferred
        try:
            yield
            stream.memory = [(a.state, a.pending) for a in self._adapters]
        finally:
            for adapter in self._adapters:  # no stream's state stays behind in the model
                adapter.state, adapter.pending, adapter.defer_writes = None, None, False

    @property
    def retriever(self):
        """The HEP-DNA retriever this engine's streams summarise their archived spans with (None without one)."""
        return self._retriever

    @torch.no_grad()
    def question_hidden(self, ids: list[int] | torch.Tensor) -> torch.Tensor | None:
        """A question's hidden states [d] at the retriever's layer, mean-pooled, read alone by the bare base model
        (None without a retriever)."""
        r = self._retriever
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if r is None or ids.numel() == 0:
            return None
        with adapters_off(self.model):
            out = self.model(input_ids=ids[None].to(self.device), use_cache=False, output_hidden_states=True,
                             logits_to_keep=1)
        return r.hidden_of(out.hidden_states).float().mean(0).cpu()

    @torch.no_grad()
    def question_summary(self, ids: list[int] | torch.Tensor) -> torch.Tensor | None:
        """The retriever's encoding [k] of a question, as its archive's spans are encoded (None without one)."""
        hidden = self.question_hidden(ids)
        return None if hidden is None else self._retriever.encode(hidden.to(self.device)).cpu()

    @property
    def pointer(self):
        """The HEP-DNA pointer heads this engine uses (None without them, or for a baseline policy)."""
        return self._pointer

    def truncate_graph(self, stream: Stream) -> None:
        """Cut the stream's cache and memory from the autograd graph (truncated backprop through time)."""
        from symphony.memory import detach_state

        for layer in getattr(stream.cache, "layers", []):
            if getattr(layer, "is_initialized", False) and layer.keys is not None:
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
        if stream.memory is not None:
            stream.memory = [(detach_state(state), None if pending is None else pending.detach())
                             for state, pending in stream.memory]
        if stream.persistent and self.grad_enabled and self._persistent is not None:
            self._reattach_persistent(stream)

    def _reattach_persistent(self, stream: Stream) -> None:
        """Give the persistent slots a fresh graph after a truncation, so the persistent tokens (and whatever their
        KV depends on) get gradients from every window of a sample. Their KV is a function of the parameters only
        (the prefix comes first, sees only itself, and the memories read a fresh state), so recomputing it in a
        scratch stream gives the same values; the slots never moved, so no re-rotation is needed."""
        scratch = self.cache_policy.make_stream(self, stream.persistent)
        if self._adapters:
            scratch.memory = [(None, None)] * len(self._adapters)
        self._prefill_persistent(scratch, stream.task_id)
        p = stream.persistent
        for old, new in zip(stream.cache.layers, scratch.cache.layers):
            if getattr(old, "is_initialized", False) and old.keys is not None and new.keys is not None:
                old.keys = torch.cat([new.keys, old.keys[..., p:, :]], dim=-2)
                old.values = torch.cat([new.values, old.values[..., p:, :]], dim=-2)

    def _copy_active(self) -> bool:
        """The copy head joins decoding once trained (gate scale > 0); at exactly 0 it is skipped (a no-op)."""
        return self._pointer is not None and float(self._pointer.copy_head.gate_scale.detach()) > 0

    def copy_logprobs(self, cache: BoundedCache, hidden: torch.Tensor, logits: torch.Tensor,
                      positions: torch.Tensor, with_copy: bool = False):
        """Pointer-generator: the LM's distribution mixed with a copy distribution over the tokens the cache
        holds (up to each query's own position). Returns log-probabilities [q, V]; with `with_copy`, also
        the copy distribution alone [q, V] (the trainer supervises it directly: through the mix alone a
        copy head whose gate is 0 would get no gradient)."""
        from symphony.memory.pointer import causal_source_mask

        known = cache.token_ids >= 0
        src_ids, src_pos = cache.token_ids[known], cache.positions[known]
        dev = hidden.device
        embeds = self.model.get_input_embeddings()(src_ids.to(dev))[None]
        mask = causal_source_mask(positions + 1, src_pos).to(dev)  # the token at the query itself may be copied
        head, ids = self._pointer.copy_head, src_ids.to(dev)[None]
        p_copy = head.copy_distribution(hidden[None], embeds, ids, logits.shape[-1], mask)
        mixed = head.mix(hidden[None], logits[None], p_copy)[0]
        return (mixed, p_copy[0]) if with_copy else mixed

    def compact(self, stream: Stream) -> None:
        """Evict down to the cache's capacity; the memory adapters then store the evicted tokens."""
        if not isinstance(stream.cache, BoundedCache):
            return
        before = stream.occupied
        if not stream.cache.compact() or not self._adapters:
            return
        keep = stream.cache.last_keep
        with self._memory_of(stream), torch.set_grad_enabled(self.grad_enabled):
            for adapter in self._adapters:
                if adapter.pending is None or adapter.pending.shape[1] != before:
                    raise RuntimeError(f"memory adapter of layer {adapter.layer_idx} holds "
                                       f"{0 if adapter.pending is None else adapter.pending.shape[1]} pending rows for "
                                       f"{before} cache slots: every forward on this stream must go through feed()")
                adapter.evict(keep)

    def ingest(self, stream: Stream, ids: Iterable[int] | torch.Tensor, desc: str | None = None,
               on_segment: Callable[[Stream, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """Feed any number of tokens in segments, compacting after each. Returns the last logits [V].

        `on_segment(stream, segment_ids, logits)` sees each segment's full logits (used by perplexity)."""
        ids = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids), dtype=torch.long).reshape(-1)
        seg = self.cache_cfg.segment_len
        bar = tqdm(total=ids.numel(), desc=desc or "ingest", unit="tok", disable=not self.progress or ids.numel() <= seg)
        for start in range(0, ids.numel(), seg):
            chunk = ids[start : start + seg]
            logits = self.feed(stream, chunk, all_logits=on_segment is not None)
            if on_segment is not None:
                on_segment(stream, chunk, logits)
            self.compact(stream)
            bar.update(chunk.numel())
        bar.close()
        return stream.last_logits

    def ingest_text_chunks(self, stream: Stream, chunks: Iterable[str], total_chars: int | None = None,
                           desc: str = "ingest") -> None:
        """Tokenise and feed text piece by piece (a file of any size never sits in memory as tokens)."""
        bar = tqdm(total=total_chars, desc=desc, unit="char", unit_scale=True, disable=not self.progress)
        pending: list[int] = []
        seg = self.cache_cfg.segment_len
        for text in chunks:
            pending.extend(self.tokenizer(text, add_special_tokens=False).input_ids)
            while len(pending) >= seg:
                self.feed(stream, torch.tensor(pending[:seg]))
                self.compact(stream)
                pending = pending[seg:]
            bar.update(len(text))
        if pending:
            self.ingest(stream, pending)
        bar.close()

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, stream: Stream, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               stop_ids: Iterable[int] | None = None, on_token: Callable[[int], None] | None = None,
               generator: torch.Generator | None = None) -> list[int]:
        """Sample up to `max_new_tokens` after what the stream has seen; greedy when temperature == 0.
        The cache is compacted every `segment_len` new tokens, so generation length is unbounded too.
        After a question that recall answered, a reply that copies the re-read text keeps copying it exactly
        (`copying.CopyRule`: it continues a copy once `cache.recall_copy` tokens match, or resumes one right after
        the reply restated the asked key; 0 = off)."""
        if stream.last_logits is None:
            raise ValueError("nothing to continue from: ingest a prompt first")
        stop = set(stop_ids if stop_ids is not None else self.stop_ids())
        out: list[int] = []
        cap = self.capacity
        start = stream.tokens_seen
        copying = stream.reread and self.cache_cfg.recall_copy
        copy = CopyRule(stream.reread, self.cache_cfg.recall_copy, prefix=stream.reply_prefix,
                        breaks=chat.line_break(self),
                        content=chat.token_kinds(self).content) if copying else None
        for _ in range(max_new_tokens):
            token = sample(stream.last_logits, temperature, top_p, generator)
            if copy is not None:
                token = copy.choose(out, stream.last_logits, token)
            if token in stop:
                break
            out.append(token)
            if on_token:
                on_token(token)
            self.feed(stream, torch.tensor([token]))
            if cap is not None and stream.occupied >= cap + self.cache_cfg.segment_len:
                self.compact(stream)
        if out and stream.recall is not None:
            stream.conversation.append((start, stream.tokens_seen))
        return out

    def stop_ids(self) -> list[int]:
        ids = set()
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        for e in (eos if isinstance(eos, list) else [eos]):
            if e is not None:
                ids.add(int(e))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)

    # -- chat: shortcuts to symphony.runtime.chat -----------------------------------------------
    @property
    def chat_format(self) -> ChatFormat:
        return chat.chat_format(self)

    def recalled(self, stream: Stream, query: str) -> list[int]:
        return chat.recalled(self, stream, query)

    def ask(self, stream: Stream, text: str, after: str) -> None:
        return chat.ask(self, stream, text, after)

    def answer(self, question: str, document: str | list[int] | torch.Tensor | None = None,
               stream: Stream | None = None, max_new_tokens: int = 64, desc: str = "document", reply_prefix: str = "",
               **sampling) -> str:
        return chat.answer(self, question, document, stream, max_new_tokens, desc, reply_prefix, **sampling)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cut = sorted_p.cumsum(0) - sorted_p > top_p
        sorted_p[cut] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def engine_from_config(cfg, policy: str | None = None, progress: bool = True) -> StreamingEngine:
    """Load the configured model (with the trained adapters of `memory.checkpoint`, if set) and wrap it in
    a streaming engine."""
    from symphony.models import freeze, load_model

    loaded = load_model(cfg.model, seed=cfg.seed)
    freeze(loaded.model)
    if cfg.memory.checkpoint:
        from symphony.memory.checkpoint import load_checkpoint

        load_checkpoint(loaded.model, cfg.memory.checkpoint, model_name=cfg.model.name)
    from symphony.memory.checkpoint import use_retriever

    use_retriever(loaded.model, cfg.memory.retriever, cfg.model.name)
    heads = pointer_heads(loaded.model)
    if not cfg.memory.copy_head and heads is not None:
        with torch.no_grad():  # the ablation: a closed copy gate is skipped, decoding is the LM's alone
            heads.copy_head.gate_scale.zero_()
    return StreamingEngine(loaded.model, loaded.tokenizer, cfg.cache, cfg.salience, policy=policy, progress=progress)
