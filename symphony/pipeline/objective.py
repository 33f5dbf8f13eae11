"""One sample's losses, streamed through the engine exactly as inference streams it.

Targets: the token at position p is predicted from position p-1; a segment's first token is predicted by
the previous segment's last row, so no target is lost at segment boundaries. Losses:
- `nll`: negative log-likelihood of the `loss_mask` targets, under the LM head or, with the pointer heads,
  under the pointer-generator mix (the distribution the model decodes from once the copy gate is open);
- `router`: binary cross-entropy of the salience router against `keep_mask` (every token).
Gradients reach back `tbptt` segments through the cache and the memory state (0: the whole sample).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from symphony.runtime.engine import StreamingEngine


@dataclass
class SampleStats:
    nll: float = 0.0  # summed over targets
    router: float = 0.0  # summed over tokens
    targets: int = 0
    tokens: int = 0
    extra: dict = field(default_factory=dict)


def stream_sample(engine: StreamingEngine, ids: torch.Tensor, loss_mask: torch.Tensor, keep_mask: torch.Tensor,
                  use_copy: bool, use_router: bool, tbptt: int = 0, scale: float = 1.0,
                  backward: bool = True) -> SampleStats:
    """Stream one sample; when `backward`, accumulate scale · (mean nll + mean router bce) into .grad."""
    ids, loss_mask, keep_mask = ids.reshape(-1), loss_mask.reshape(-1).bool(), keep_mask.reshape(-1).float()
    n = ids.numel()
    n_targets = max(1, int(loss_mask[1:].sum()))
    seg = engine.cache_cfg.segment_len
    stream = engine.new_stream()
    pointer = engine.pointer
    stats = SampleStats(tokens=n, targets=int(loss_mask[1:].sum()))
    prev = None  # (logits [V], hidden [D], position) of the previous segment's last token
    window, segments = None, 0
    for start in range(0, n, seg):
        chunk = ids[start:start + seg]
        out = engine.forward(stream, chunk, all_logits=True, mix_copy=False)
        logits, hidden = out.logits, out.hidden
        # rows predicting this chunk's tokens (the first from the previous segment's last row)
        if prev is None:
            pred_l, pred_h, pred_pos, tgt, tmask = logits[:-1], hidden[:-1], out.positions[:-1], chunk[1:], \
                loss_mask[start + 1:start + len(chunk)]
        else:
            pred_l = torch.cat([prev[0][None], logits[:-1]])
            pred_h = torch.cat([prev[1][None], hidden[:-1]])
            pred_pos = torch.cat([prev[2][None], out.positions[:-1]])
            tgt, tmask = chunk, loss_mask[start:start + len(chunk)]
        loss = logits.new_zeros(())
        rows = torch.nonzero(tmask.to(logits.device))[:, 0]
        if rows.numel():
            t = tgt.to(logits.device)[rows]
            if use_copy:
                logp, p_copy = engine.copy_logprobs(stream.cache, pred_h[rows], pred_l[rows], pred_pos[rows],
                                                    with_copy=True)
                nll = -logp.gather(-1, t[:, None]).sum()
                # pointer supervision: where the target is among the cached tokens, the copy distribution
                # alone should point at it (gives the copy head gradients while its gate is still ~0)
                p_t = p_copy.gather(-1, t[:, None])[:, 0]
                hit = p_t > 0
                if backward and hit.any():
                    loss = loss - torch.log(p_t[hit].clamp_min(1e-30)).sum() / n_targets
            else:
                nll = F.cross_entropy(pred_l[rows].float(), t, reduction="sum")
            stats.nll += float(nll.detach())
            loss = loss + nll / n_targets
        if use_router and pointer is not None:
            bce = pointer.router.loss(hidden.detach(), keep_mask[start:start + len(chunk)].to(hidden.device))
            stats.router += float(bce.detach()) * len(chunk)
            loss = loss + bce * len(chunk) / n
        engine.compact(stream)
        prev = (logits[-1], hidden[-1], out.positions[-1])
        window = loss if window is None else window + loss
        segments += 1
        last = start + seg >= n
        if backward and (last or (tbptt and segments % tbptt == 0)):
            if window.requires_grad:
                (window * scale).backward()
            window = None
            engine.truncate_graph(stream)
            prev = tuple(p.detach() for p in prev)
    return stats
