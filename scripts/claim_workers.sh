#!/usr/bin/env bash
# make claim: the claim study (experiment=claim_minilm, docs/claim.md) with one 1-thread worker per core. First the
# lr grids on seeds 0 and 1 (the head alone first: it is the floor of every claim); then, until nothing is left,
# what `python -m qpeft.claim --pending` lists: the grid extended by 5x past a winning edge, the other seeds at
# each point's chosen lr, and the claim pairs with the linear head; last the table and figures.
# Resumable: run it again and finished runs are skipped, a killed run resumes from its checkpoint.
set -u
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it honours OMP_NUM_THREADS
mkdir -p outputs
for i in $(seq 1 "$WORKERS"); do  # run folders are locked: each worker takes the next free job
  { $PY run.py -m experiment=claim_minilm_head; $PY run.py -m experiment=claim_minilm; } \
    > "outputs/claim_minilm.$i.log" 2>&1 &
done
wait
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
  for i in $(seq 1 "$WORKERS"); do
    while read -r run; do $PY $run; done < outputs/claim_minilm.pending >> "outputs/claim_minilm.$i.log" 2>&1 &
  done
  wait
done
$PY -m qpeft.claim --records outputs/claim_minilm
