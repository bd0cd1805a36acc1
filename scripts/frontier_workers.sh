#!/usr/bin/env bash
# make frontier: one worker per core through experiment=frontier_minilm, in the order that makes partial results
# useful: seed 0 of every point but the five slowest full-rank ones, then seeds 1 and 2 of the points the
# README's claims rest on, then seed 0 of the slow ones, then everything else; then the lr grids of VeRA and
# FourierFT, of the rank-stable Pauli points, of LoRA, of TinyLoRA and of Taylor (experiment=frontier_minilm_lr,
# _pauli, _lora, _tinylora, _taylor; seed 0), the other seeds at the lrs chosen on the held-out slice, and the table and figures.
# Resumable: run it again and finished runs are skipped, a killed run starts again.
set -u
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it honours OMP_NUM_THREADS
CLAIMS=head_only,lora_r1,lora,quantum,frontier/paper_k8_l1,quantum_taylor,frontier/pauli_k8_l1,frontier/pauli_k8_l1_ws,frontier/pauli_kfull_l1
SLOW=frontier/paper_kfull_l1,frontier/pauli_kfull_l1_mask8,frontier/pauli_kfull_l1_mask64,frontier/pauli_kfull_l2,frontier/pauli_kfull_l4
FAST=$(SLOW=$SLOW $PY - <<'PY'
import os, yaml
adapters = yaml.safe_load(open("configs/experiment/frontier_minilm.yaml"))["hydra"]["sweeper"]["params"]["adapter"]
slow = set(os.environ["SLOW"].split(","))
print(",".join(a.strip() for a in adapters.split(",") if a.strip() not in slow))
PY
)
mkdir -p outputs
worker() {
  $PY run.py -m experiment=frontier_minilm seed=0 adapter="$FAST"
  $PY run.py -m experiment=frontier_minilm seed=1,2 adapter=$CLAIMS
  $PY run.py -m experiment=frontier_minilm seed=0 adapter=$SLOW
  $PY run.py -m experiment=frontier_minilm
  $PY run.py -m experiment=frontier_minilm_lr seed=0   # VeRA / FourierFT at their own lr: the grid, on seed 0
  $PY run.py -m experiment=frontier_minilm_lr_pauli seed=0   # the same for the rank-stable Pauli points (K=8, 64, full)
  $PY run.py -m experiment=frontier_minilm_lr_lora seed=0   # and for LoRA r=1, 2, 8
  $PY run.py -m experiment=frontier_minilm_lr_tinylora seed=0   # and for TinyLoRA
  $PY run.py -m experiment=frontier_minilm_lr_taylor seed=0   # and for Taylor K=1, 2, 4
}
for i in $(seq 1 "$WORKERS"); do
  worker > "outputs/frontier_minilm.$i.log" 2>&1 &  # run folders are locked: each worker takes the next free job
done
wait
# the other seeds at the lr each grid's point chose on the held-out slice
$PY -m qpeft.frontier --records outputs/frontier_minilm --pending > outputs/frontier_minilm.pending || exit
for i in $(seq 1 "$WORKERS"); do
  while read -r run; do $PY $run; done < outputs/frontier_minilm.pending >> "outputs/frontier_minilm.$i.log" 2>&1 &
done
wait
$PY -m qpeft.frontier --records outputs/frontier_minilm
