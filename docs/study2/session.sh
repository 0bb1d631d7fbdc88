#!/usr/bin/env bash
# Study 2: start (or go on with) stage 2 in a session, on whatever machine it got.
#
# Sets up the pinned study checkout (a worktree of 29639b6, the source version
# every stage-2 job ran), restores this CPU class's finished job records
# (records.sh unpack), then runs in the background what this class still
# lacks for the final NER table (report.md, "What the machinery got wrong":
# the numbers follow the CPU class, so one class's jobs make the table), and
# packs each job's record as it finishes (records.sh pack, every 60 s).
# Commit docs/study2/confirm/records and the report's progress rows before
# the session ends: a job still running then is lost with the machine.
#   usage: bash docs/study2/session.sh [STAGE...]   (from the main checkout,
#          after `make install`; STAGE as "ner contrastive"; default: by class;
#          STUDY_DIR: the study checkout, default ../wt/study2)
set -euo pipefail
# The data root is spelled canonically (/work/shared/data, not /work/main/../shared/data):
# the pinned version keys a job's finished result by the data files' paths as
# spelled, and the committed records were made with the canonical spelling.
main=$(cd "$(dirname "$0")/../.." && pwd)
study=${STUDY_DIR:-$main/../wt/study2}
logs=$study/../study2-logs
[ -d "$study" ] || git -C "$main" worktree add --detach "$study" 29639b6
mkdir -p "$logs"
export PATH=$main/.venv/bin:$PATH PYTHONPATH=$study XLT_DATA_DIR=$(cd "${XLT_DATA_DIR:-$main/../shared/data}" && pwd -P) \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$study"
class=$(bash "$main/docs/study2/records.sh" machine)
bash "$main/docs/study2/records.sh" unpack
if [ $# -gt 0 ]; then
  stages=("$@")
else
  case ${class%% *} in
    intel-xeon) stages=("ner contrastive" "ner original" "ner continual") ;;   # the first machine's class
    amd-epyc)   stages=("ner continual" "ner contrastive") ;;
    *) echo "session.sh: no plan for the CPU class $class; name the stages" >&2; exit 2 ;;
  esac
fi
echo "class: $class; stages: ${stages[*]}"
nohup bash -c 'for spec in "$@"; do echo "=== $(date -Is) start $spec"; rc=0; bash docs/study2/confirm.sh $spec || rc=$?; echo "=== $(date -Is) end $spec rc=$rc"; done' \
  runner "${stages[@]}" >> "$logs/runner.log" 2>&1 &
nohup bash -c 'while true; do bash "$1" pack; sleep 60; done' packer "$main/docs/study2/records.sh" >> "$logs/packer.log" 2>&1 &
echo "runner and packer started; logs in $logs"
