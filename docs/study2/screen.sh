#!/usr/bin/env bash
# Study 2, stage 1: screen the contrastive adjustment objective without fine-tuning.
# Every job adjusts e5_small on 1,000 en-xx pairs of the shared offline pool
# (seed 1), then measures sentence retrieval on the 1,000 held-out pairs (all
# layers); the adjusted model's evidence.json holds the held-out related /
# unrelated distances (before and after) and the English drift.  Rows: the
# original model, L2 = the first study's setting A (the paper code's
# adjustment: mse terms, dropout on, embeddings trained), and contrastive with
# A's other settings at 2 temperatures x 2 learning rates, plus one row whose
# English regulariser is summed (reduction=sum: under mse the regulariser is a
# mean over vector elements, far smaller than a contrastive term of about
# log(pairs in the batch), so it barely anchors English).  Cached: a rerun
# skips finished adjustments.
#   usage: bash docs/study2/screen.sh ru      (one language per call; run ru and hi side by side)
set -euo pipefail
lang=${1:?usage: screen.sh LANG}
out=${STUDY_RUNS:-multirun/study2}/screen
common=(task=retrieval lang=$lang seed=1 corpus.heldout=1000 task.options.layer=all)
A=(corpus.size=1000 adjustment.reduction=mse adjustment.dropout=true adjustment.freeze_embeddings=false)
sweep() { local name=$1; shift; xlt -m "${common[@]}" "$@" hydra.sweep.dir="$out/$name-$lang"; }

sweep original    mode=original
sweep l2_a        mode=adjusted "${A[@]}"
sweep contrastive mode=adjusted "${A[@]}" adjustment.objective=contrastive \
      adjustment.temperature=0.05,0.1 adjustment.lr=5e-5,1e-4
sweep contrastive_sum mode=adjusted "${A[@]}" adjustment.objective=contrastive \
      adjustment.temperature=0.1 adjustment.lr=5e-5 adjustment.reduction=sum
