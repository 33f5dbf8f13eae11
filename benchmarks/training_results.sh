#!/usr/bin/env bash
# Reproduces docs/RESULTS.md's "Trained memories" figures: the smollm2-135m-cpu pipeline, then needle and
# perplexity for sinks, untrained Symphony and trained Symphony on the same inputs and the same 512-slot
# cache (4 sinks + 124 ledger + 384 window). Every eval resumes (--resume), so the script can be re-run
# after an interruption; each step is skipped by `STEPS` (default: all of train,base,trained,big,nocopy).
#   KIND=titans|fhrr   which memory to train and evaluate (default titans)
#   RUN=DIR            the run directory (default runs/smollm2-cpu-$KIND)
#   TAG=_v2            suffix of the result directories (the rows of docs/RESULTS.md: fhrr_v2, titans_v2)
# On 2 CPU cores: the pipeline takes 30-40 min, a needle trial ~1 (8k) / ~3 (32k) / ~6 (64k) min,
# perplexity over 32k tokens ~7 min per method. Run the baselines once; run the rest once per KIND.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/symphony
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=smollm2-135m-cpu
KIND=${KIND:-titans}
RUN=${RUN:-runs/smollm2-cpu-$KIND}
STEPS=${STEPS:-train,base,trained,big,nocopy}
O=results/train
want() { [[ ",$STEPS," == *",$1,"* ]]; }
NEEDLE="eval needle -c $C --depths 10,50,90 --resume"

if want train; then
  $S pipeline -c $C -r "$RUN" --set memory.kind="$KIND"
fi
if want base; then  # baselines: sinks and the untrained engine (no checkpoint: the bare base model inside)
  # (the sinks rows of docs/RESULTS.md are the earlier runs in docs/results/train/recall_v1/: sinks has no recall
  # ledger, so the recall change of issue 6 does not touch them; this reruns them)
  $S $NEEDLE --lengths 8k,32k,64k --methods sinks --out $O/needle_sinks
  $S $NEEDLE --lengths 8k,32k,64k --methods sinks --distractors 3 --out $O/needle_sinks_mk3
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --distractors 3 --out $O/needle_base_mk3
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --out $O/needle_base
  $S eval ppl -c $C --max-tokens 8192 --methods sinks,symphony --out $O/ppl_base --resume
  $S eval ppl -c $C --max-tokens 32768 --methods sinks,symphony --out $O/ppl32k_base --resume
  $S eval ppl -c $C --max-tokens 8192 --methods full --out $O/ppl_full8k --resume  # the target's reference
fi
if want trained; then  # the trained adapters (RUN/final), same needles, same tokens
  T=${KIND}${TAG:-}
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --distractors 3 --checkpoint "$RUN" --out $O/needle_${T}_mk3
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --checkpoint "$RUN" --out $O/needle_$T
  $S eval ppl -c $C --max-tokens 8192 --methods symphony --checkpoint "$RUN" --out $O/ppl_$T --resume
  $S eval ppl -c $C --max-tokens 32768 --methods symphony --checkpoint "$RUN" --out $O/ppl32k_$T --resume
fi
if want big; then  # the targets with a 2,052-slot cache (the smollm2-135m preset's budget)
  BIG="--set cache.ledger=512 --set cache.window=1536"
  $S eval ppl -c $C $BIG --max-tokens 32768 --methods sinks,symphony --out $O/ppl32k_base_2052 --resume
  $S eval ppl -c $C $BIG --max-tokens 32768 --methods symphony --checkpoint "$RUN" --out $O/ppl32k_${KIND}${TAG:-}_2052 --resume
  # both targets at one budget: the needle with distractors at 2,052 slots too (untrained and trained)
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --distractors 3 $BIG --out $O/needle_base_mk3_2052
  $S $NEEDLE --lengths 8k,32k,64k --methods sinks --distractors 3 $BIG --out $O/needle_sinks_mk3_2052
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --distractors 3 --checkpoint "$RUN" $BIG \
      --out $O/needle_${KIND}${TAG:-}_mk3_2052
fi
if want nocopy; then  # ablation: the same checkpoint without the copy head's mix
  T=${KIND}${TAG:-}_nocopy
  OFF="--checkpoint $RUN --set memory.copy_head=false"
  $S $NEEDLE --lengths 8k,32k,64k --methods symphony --distractors 3 $OFF --out $O/needle_${T}_mk3
  $S eval ppl -c $C --max-tokens 8192 --methods symphony $OFF --out $O/ppl_$T --resume
  $S eval ppl -c $C --max-tokens 32768 --methods symphony $OFF --out $O/ppl32k_$T --resume
  $S eval ppl -c $C --set cache.ledger=512 --set cache.window=1536 --max-tokens 32768 --methods symphony $OFF \
      --out $O/ppl32k_${T}_2052 --resume
fi
