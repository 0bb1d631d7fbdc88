#!/usr/bin/env bash
# Study 2, stage 2: 5 seeds, ru and hi, full test sets, four models
# (docs/study2/report.md, "Stage 2"):
#   original     the e5_small encoder as released
#   l2           the first study's setting A (the paper code's L2 adjustment:
#                mse terms, dropout on, embeddings trained, 1,000 pairs)
#   contrastive  A with the contrastive objective at the screen's choice
#                (temperature 0.1, lr 1e-4: the best retrieval mean over ru and hi)
#   continual    the contrastive adjustment, then fine-tuning with the
#                contrastive alignment loss as an auxiliary term every step
# Tasks: xnli (XNLI and mixed XNLI: the first study's protocol, 2,490 English
# dev pairs x 2 epochs, full 5,010-pair ru and hi test sets) and ner (WikiANN:
# the first 5,000 English training sentences x 3 epochs, the paper's NER
# hyperparameters otherwise; ru: the labelled dev set, hi: the test set).
# Cached and resumable: a rerun reuses every finished adjustment (shared by
# the xnli and ner stages of a model) and fine-tuning (the original model's
# English fine-tuning is shared by ru and hi), and a killed job resumes from
# its last checkpoint.  Two jobs at a time on the CPU cores.
#   usage: bash docs/study2/confirm.sh xnli|ner original|l2|contrastive|continual
set -euo pipefail
usage="usage: confirm.sh xnli|ner original|l2|contrastive|continual"
task=${1:?$usage}
stage=${2:?$usage}
case $task in
  xnli) task_args=(task=xnli) ;;
  ner)  task_args=(task=ner task.train_limit=5000) ;;
  *) echo "confirm.sh: unknown task '$task' (xnli, ner)" >&2; exit 2 ;;
esac
out=${STUDY_RUNS:-multirun/study2}/confirm/$task
# trainer.checkpoint_every_n_steps=50: a job killed at the end of a session
# loses at most 50 steps (the interval is not part of any cache key).
common=("${task_args[@]}" lang=ru,hi seed=1,2,3,4,5 corpus.heldout=1000 trainer.checkpoint_every_n_steps=50
        hydra/launcher=local_gpus 'hydra.launcher.gpus=[]' hydra.launcher.n_jobs=2)
A=(corpus.size=1000 adjustment.reduction=mse adjustment.dropout=true adjustment.freeze_embeddings=false)
C=("${A[@]}" adjustment.objective=contrastive adjustment.temperature=0.1 adjustment.lr=1e-4)
case $stage in
  original)    xlt -m "${common[@]}" mode=original hydra.sweep.dir="$out/original" ;;
  l2)          xlt -m "${common[@]}" mode=adjusted "${A[@]}" hydra.sweep.dir="$out/l2" ;;
  contrastive) xlt -m "${common[@]}" mode=adjusted "${C[@]}" hydra.sweep.dir="$out/contrastive" ;;
  continual)   xlt -m "${common[@]}" mode=continual "${C[@]}" hydra.sweep.dir="$out/continual" ;;
  *) echo "confirm.sh: unknown stage '$stage' (original, l2, contrastive, continual)" >&2; exit 2 ;;
esac
