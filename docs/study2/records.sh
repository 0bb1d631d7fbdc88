#!/usr/bin/env bash
# Study 2's finished job records, kept in the repository, per machine class.
#
# xlt's caches resume a stage across sessions only while the machine keeps
# them; a session that starts on a fresh machine has lost every job folder.
# So each finished (status ok) job of the confirm stage is packed, once, into
# docs/study2/confirm/records/<machine>/<task>-<stage>-<job>.tar.xz: its
# results.json, resolved config (.hydra), per-example predictions (what the
# significance tests read), train.log and machine.txt (the CPU it ran on).
# `unpack` puts back the records of this machine's class under the sweep
# folders; a rerun of confirm.sh at the same code version then skips those
# jobs (xlt.results.finished: same config, seed, code and data, predictions
# there) and xlt-report reads them as it reads any job.
#
# Why per machine class: the same job at the same code and data gives
# other numbers on another CPU (an AMD EPYC against an Intel Xeon: up to
# 0.5 points of entity F1), while two Intel Xeon machines agree to the last
# digit; the paired tests must not pair predictions of two classes.
#   usage: bash docs/study2/records.sh pack|unpack|machine   (from the study
#          checkout; STUDY_RUNS as for confirm.sh, default multirun/study2;
#          STUDY_MACHINE overrides the class read from /proc/cpuinfo)
set -euo pipefail
runs=${STUDY_RUNS:-multirun/study2}/confirm
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
case $cpu in
  *AMD*EPYC*) class=amd-epyc ;;
  *Intel*Xeon*) class=intel-xeon ;;
  *) class=$(printf '%s' "$cpu" | tr 'A-Z' 'a-z' | sed 's/([a-z]*)//g; s/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//') ;;
esac
machine=${STUDY_MACHINE:-$class}
store=$(cd "$(dirname "$0")" && pwd)/confirm/records/$machine
case ${1:-} in
  machine) echo "$machine ($cpu)" ;;
  pack)
    mkdir -p "$store"
    for results in "$runs"/*/*/*/results.json; do
      [ -e "$results" ] || continue
      job=${results%/results.json}
      rel=${job#"$runs"/}                      # ner/continual/3
      archive=$store/${rel//\//-}.tar.xz
      [ -e "$archive" ] && continue
      python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["status"] != "ok")' "$results" || continue
      [ -e "$job/machine.txt" ] || echo "$cpu" > "$job/machine.txt"   # packed in the session that ran it
      files=("$rel/results.json" "$rel/.hydra" "$rel/machine.txt")
      for optional in predictions train.log; do
        [ -e "$job/$optional" ] && files+=("$rel/$optional")
      done
      tmp=$(mktemp "$archive.XXXXXX")   # two packers at once each write their own file
      tar -C "$runs" -cJf "$tmp" "${files[@]}"
      mv "$tmp" "$archive"
      echo "packed $rel -> $archive ($(du -k "$archive" | cut -f1) KB)"
    done ;;
  unpack)
    mkdir -p "$runs"
    for archive in "$store"/*.tar.xz; do
      [ -e "$archive" ] || continue
      tar -C "$runs" --skip-old-files -xJf "$archive"   # a job folder already here is kept as it is
      echo "unpacked $machine/$(basename "$archive" .tar.xz)"
    done ;;
  *) echo "usage: records.sh pack|unpack|machine" >&2; exit 2 ;;
esac
