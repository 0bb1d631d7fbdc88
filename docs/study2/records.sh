#!/usr/bin/env bash
# Study 2's finished job records, kept in the repository.
#
# xlt's caches resume a stage across sessions only while the machine keeps
# them; a session that starts on a fresh machine has lost every job folder.
# So each finished (status ok) job of the confirm stage is packed, once, into
# docs/study2/confirm/records/<task>-<stage>-<job>.tar.xz: its results.json,
# resolved config (.hydra), per-example predictions (what the significance
# tests read) and train.log.  `unpack` puts them back under the sweep folders;
# a rerun of confirm.sh at the same code version then skips those jobs
# (xlt.results.finished: same config, seed, code and data, predictions there)
# and xlt-report reads them as it reads any job.
#   usage: bash docs/study2/records.sh pack|unpack   (from the study checkout;
#          STUDY_RUNS as for confirm.sh, default multirun/study2)
set -euo pipefail
runs=${STUDY_RUNS:-multirun/study2}/confirm
store=$(cd "$(dirname "$0")" && pwd)/confirm/records
case ${1:-} in
  pack)
    mkdir -p "$store"
    for results in "$runs"/*/*/*/results.json; do
      [ -e "$results" ] || continue
      job=${results%/results.json}
      rel=${job#"$runs"/}                      # ner/continual/3
      archive=$store/${rel//\//-}.tar.xz
      [ -e "$archive" ] && continue
      python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["status"] != "ok")' "$results" || continue
      files=("$rel/results.json" "$rel/.hydra")
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
      echo "unpacked $(basename "$archive" .tar.xz)"
    done ;;
  *) echo "usage: records.sh pack|unpack" >&2; exit 2 ;;
esac
