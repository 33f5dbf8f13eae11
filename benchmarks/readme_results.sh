#!/usr/bin/env bash
# Reproduces the figures in docs/RESULTS.md (SmolLM2-135M-Instruct, CPU).
# Each command resumes where it stopped (--resume), so the script can be re-run after an interruption.
# On a 2-core CPU the whole script takes a few hours; full attention at 64k is skipped by --time-limit.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/symphony
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# memory vs context length: fresh worker process per cell
$S eval oom --lengths 4k,16k,64k --methods sinks,symphony,full --time-limit 2400 --decode-tokens 8 \
    --out results/oom --resume
# needle grid: the three methods to 32k (full attention at 32k: ~30 min a trial on this CPU)
$S eval needle --lengths 2k,8k,32k --depths 10,50,90 --methods full,sinks,symphony --out results/needle --resume
# ablation: Symphony without the recall ledger (KV ledger only)
$S eval needle --lengths 8k --depths 10,50,90 --methods symphony --set cache.recall_tokens=0 \
    --out results/needle_norecall --resume
# streaming perplexity at 8k and 32k tokens
$S eval ppl --max-tokens 8192 --out results/ppl8k --resume
$S eval ppl --max-tokens 32768 --methods sinks,symphony,full --out results/ppl32k --resume
# functional integrity
$S eval integrity --prefix-tokens 4096 --out results/integrity --resume
# memory modules' throughput
.venv/bin/python benchmarks/memory_throughput.py --tokens 4096,65536,1048576 --out results/memory_throughput_1m.json
# Titans research extensions: interference A/B, overhead, switch rate vs threshold (~7 min)
.venv/bin/python benchmarks/titans_interference.py --out results/titans_interference.json
