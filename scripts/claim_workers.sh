#!/usr/bin/env bash
# make claim: the claim study (experiment=claim_minilm, docs/claim.md) with one 1-thread worker per core. Each
# worker asks `python -m qpeft.claim --next` for the first run the rule still asks for that no other worker is
# running (the claims first: the claim points' lr grids on seeds 0 and 1, extended by 5x past a winning edge, and
# their other seeds at the chosen lr; then their linear-head runs; then the other points), runs it and asks again,
# so a grid's last run turns into the chosen lr's seeds at once. A worker with nothing free waits for the others;
# the last one out writes the table and figures. `--eta` says what is left.
# Resumable: run it again and finished runs are skipped, a killed run resumes from its checkpoint.
set -u
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it honours OMP_NUM_THREADS
RECORDS=outputs/claim_minilm
WAIT_S=${WAIT_S:-60}  # how long a worker with nothing free sleeps before it asks again
mkdir -p outputs

worker() {
  local log="outputs/claim_minilm.$1.log" next failed=""
  while :; do
    next=$($PY -m qpeft.claim --records "$RECORDS" --next) || return 2
    if [ -z "$next" ]; then
      [ -z "$($PY -m qpeft.claim --records "$RECORDS" --pending)" ] && return 0  # the study is complete
      sleep "$WAIT_S"  # every run left is running, or waits on a choice that runs still make
      continue
    fi
    if $PY $next >> "$log" 2>&1; then
      failed=""
    elif [ "$next" = "$failed" ]; then  # the same run failed twice: its log says why
      echo "make claim: this run did not finish, twice (see $log): $next" >&2
      return 2
    else
      failed=$next
    fi
  done
}

$PY -m qpeft.claim --records "$RECORDS" --eta 2>/dev/null | tail -1
for i in $(seq 1 "$WORKERS"); do
  worker "$i" &
  sleep 20  # each worker's run holds its folder's lock before the next worker asks
done
status=0
for job in $(jobs -p); do wait "$job" || status=2; done
[ "$status" = 0 ] && { $PY -m qpeft.claim --records "$RECORDS" || status=2; }
exit "$status"
