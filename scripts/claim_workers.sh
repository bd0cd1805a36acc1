#!/usr/bin/env bash
# make claim: the claim study (experiment=claim_minilm, docs/claim.md) with one 1-thread worker per core. Until
# nothing is left, each round runs what `python -m qpeft.claim --pending` lists, the claims first: the claim
# points' lr grids on seeds 0 and 1 (extended by 5x past a winning edge) and their other seeds at the chosen lr,
# then their linear-head runs, then the other points; last the table and figures. `--eta` says what is left.
# Resumable: run it again and finished runs are skipped, a killed run resumes from its checkpoint.
set -u
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it honours OMP_NUM_THREADS
mkdir -p outputs
last=""
while $PY -m qpeft.claim --records outputs/claim_minilm --pending > outputs/claim_minilm.pending; do
  [ -s outputs/claim_minilm.pending ] || break
  now=$(cat outputs/claim_minilm.pending)
  if [ "$now" = "$last" ]; then  # the same runs again: they failed (their logs say why)
    echo "make claim: these runs did not finish; see outputs/claim_minilm.*.log" >&2
    cat outputs/claim_minilm.pending >&2
    exit 2
  fi
  last=$now
  $PY -m qpeft.claim --records outputs/claim_minilm --eta 2>/dev/null | tail -1
  for i in $(seq 1 "$WORKERS"); do  # run folders are locked: each worker takes the next free job
    while read -r run; do $PY $run; done < outputs/claim_minilm.pending >> "outputs/claim_minilm.$i.log" 2>&1 &
  done
  wait
done
$PY -m qpeft.claim --records outputs/claim_minilm
