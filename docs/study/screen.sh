#!/usr/bin/env bash
# Stage 1 of the study: screen adjustment settings without fine-tuning.
# Every job adjusts e5_small on corpus.size en-xx pairs of the shared offline
# pool (seed 1), then measures sentence retrieval on the 1,000 held-out pairs
# (all layers); the adjusted model's evidence.json holds the held-out
# related/unrelated distances and the English drift.  Cached: rerunning skips
# finished adjustments (a finished job is rerun, but only its evaluation).
#   usage: bash docs/study/screen.sh ru      (one language per call; run ru and hi side by side)
set -euo pipefail
lang=${1:?usage: screen.sh LANG}
out=${STUDY_RUNS:-multirun/study}/screen
common=(task=retrieval lang=$lang seed=1 corpus.heldout=1000 task.options.layer=all)
sweep() { local name=$1; shift; xlt -m "${common[@]}" "$@" hydra.sweep.dir="$out/$name-$lang"; }

sweep original      mode=original
sweep lr_reduction  mode=adjusted corpus.size=1000 adjustment.lr=5e-6,1.5e-5,5e-5 adjustment.reduction=sum,mse
sweep dropout       mode=adjusted corpus.size=1000 adjustment.dropout=true
sweep embeddings    mode=adjusted corpus.size=1000 adjustment.freeze_embeddings=false
sweep paper         mode=adjusted corpus.size=1000 adjustment.reduction=mse adjustment.dropout=true adjustment.freeze_embeddings=false
sweep size          mode=adjusted corpus.size=5000
