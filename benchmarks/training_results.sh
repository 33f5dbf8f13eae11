#!/usr/bin/env bash
# Reproduces the README's "Trained memories" figures: the smollm2-135m-cpu pipeline, then needle and
# perplexity for sinks, untrained Symphony and trained Symphony on the same inputs and the same 512-slot
# cache. Every eval resumes (--resume), so the script can be re-run after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/symphony
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=smollm2-135m-cpu
LENGTHS=${LENGTHS:-8k}
KIND=${KIND:-fhrr}
RUN=runs/smollm2-cpu-$KIND

$S pipeline -c $C -r $RUN --set memory.kind=$KIND
# baselines (no checkpoint: symphony = the untrained engine, bare base model inside)
$S eval needle -c $C --lengths $LENGTHS --depths 10,50,90 --methods sinks,symphony --out results/train/needle_base --resume
$S eval needle -c $C --lengths $LENGTHS --depths 10,50,90 --methods sinks,symphony --distractors 3 \
    --out results/train/needle_base_mk3 --resume
$S eval ppl -c $C --max-tokens 8192 --methods sinks,symphony --out results/train/ppl_base --resume
# trained adapters (RUN/final)
$S eval needle -c $C --lengths $LENGTHS --depths 10,50,90 --methods symphony --checkpoint $RUN \
    --out results/train/needle_$KIND --resume
$S eval needle -c $C --lengths $LENGTHS --depths 10,50,90 --methods symphony --distractors 3 --checkpoint $RUN \
    --out results/train/needle_${KIND}_mk3 --resume
$S eval ppl -c $C --max-tokens 8192 --methods symphony --checkpoint $RUN --out results/train/ppl_$KIND --resume
# 32k with 3 distractors
$S eval needle -c $C --lengths 32k --depths 10,50,90 --methods sinks --distractors 3 \
    --out results/train/needle_sinks_mk3_32k --resume
$S eval needle -c $C --lengths 32k --depths 10,50,90 --methods symphony --distractors 3 \
    --out results/train/needle_base_mk3_32k --resume
$S eval needle -c $C --lengths 32k --depths 10,50,90 --methods symphony --distractors 3 --checkpoint $RUN \
    --out results/train/needle_${KIND}_mk3_32k --resume
