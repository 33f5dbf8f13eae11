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
#   6. 16k: StreamingLLM (sinks)                                                          OUT/<hay>/16k_sinks
#   7. 32k: StreamingLLM (sinks)                                                          OUT/<hay>/32k_sinks
# A haystack other than builtin runs only the tasks that read it: the noise-text and needle-only tasks would repeat
# the builtin run's inputs exactly. On one CPU core: ~75-160 s per 16k sample, twice that at 32k.
set -euo pipefail
HAY=${1:?usage: benchmarks/ruler_suite.sh builtin|manpages|FILE [OUT_ROOT] [SAMPLES]}
ROOT=${2:-docs/results/ruler}
SAMPLES=${3:-3}
NAME=$(basename "$HAY" .txt)
OUT="$ROOT/$NAME"
SYM=${SYMPHONY:-.venv/bin/symphony}
PY=${PYTHON:-.venv/bin/python}
TASKS=all
if [ "$HAY" != builtin ]; then
    TASKS=$("$PY" -c "from symphony.evaluation.ruler_tasks import TASKS as T; print(','.join(t for t in T if T[t].haystack == 'essay'))")
fi
run() { "$SYM" eval ruler --haystack "$HAY" --resume --tasks "$TASKS" "$@"; }
run --lengths 16k --methods symphony --samples "$SAMPLES" --out "$OUT/16k"
run --lengths 4k --methods full --samples "$SAMPLES" --out "$OUT/4k"
run --lengths 32k --methods symphony --samples "$SAMPLES" --out "$OUT/32k"
COPY=niah_single_2,niah_single_3
[ "$HAY" = builtin ] && COPY=$COPY,niah_multikey_3
"$SYM" eval ruler --haystack "$HAY" --resume --lengths 16k --methods symphony --samples "$SAMPLES" --tasks "$COPY" \
    --set cache.recall_copy=0 --out "$OUT/16k_nocopy"
run --lengths 4k --methods full,sinks,symphony --samples "$SAMPLES" --out "$OUT/4k"
run --lengths 16k --methods sinks --samples "$SAMPLES" --out "$OUT/16k_sinks"
run --lengths 32k --methods sinks --samples "$SAMPLES" --out "$OUT/32k_sinks"
