#!/usr/bin/env bash
# The recall measurements of docs/RESULTS.md ("Recall: RULER-style tasks"), for one haystack:
#   benchmarks/ruler_suite.sh builtin|manpages|FILE [OUT_ROOT] [SAMPLES]
# SmolLM2-135M with the default 2,052-slot cache, every task, the comparisons the results need first (each step
# resumable, so a run cut short continues where it stopped):
#   1. 16k: Symphony                                                                      OUT/<hay>/16k
#   2. 4k: full attention (the reference a small model reaches with everything in view)   OUT/<hay>/4k
#   3. 32k: Symphony                                                                      OUT/<hay>/32k
#   4. 16k, the value-copying tasks: Symphony without the copy rule (cache.recall_copy=0)  OUT/<hay>/16k_nocopy
#   5. 4k: Symphony and StreamingLLM (sinks)                                              OUT/<hay>/4k
#   6. 16k: StreamingLLM, 1 sample per task                                               OUT/<hay>/16k_sinks
# On one CPU core, about 3 hours for one haystack (16k: ~75 s per sample, 32k: ~2 minutes).
set -euo pipefail
HAY=${1:?usage: benchmarks/ruler_suite.sh builtin|manpages|FILE [OUT_ROOT] [SAMPLES]}
ROOT=${2:-docs/results/ruler}
SAMPLES=${3:-3}
NAME=$(basename "$HAY" .txt)
OUT="$ROOT/$NAME"
SYM=${SYMPHONY:-.venv/bin/symphony}
run() { "$SYM" eval ruler --haystack "$HAY" --resume "$@"; }
run --lengths 16k --methods symphony --samples "$SAMPLES" --out "$OUT/16k"
run --lengths 4k --methods full --samples "$SAMPLES" --out "$OUT/4k"
run --lengths 32k --methods symphony --samples "$SAMPLES" --out "$OUT/32k"
run --lengths 16k --methods symphony --samples "$SAMPLES" --tasks niah_single_2,niah_single_3,niah_multikey_3 \
    --set cache.recall_copy=0 --out "$OUT/16k_nocopy"
run --lengths 4k --methods full,sinks,symphony --samples "$SAMPLES" --out "$OUT/4k"
run --lengths 16k --methods sinks --samples 1 --out "$OUT/16k_sinks"
