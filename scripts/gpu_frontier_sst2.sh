#!/usr/bin/env bash
# Issue 15, item 7: the main frontier points on SST-2's FULL training set, on one GPU (MiniLM is small: the runs
# share it, all at once). Protocol frontier_cpu with every training sentence but the 2,000 held out
# (about 65,000), 2 epochs (about 4,100 steps at batch 32), lr 8e-4, bf16 autocast where the GPU has it; the
# full dev set reported. Budget: under 8 minutes on one H200 (MiniLM trained at 18-29 steps/s there with five
# runs sharing the GPU). Records under $OUT/frontier_gpu_sst2/, then the table and figure
# ($RESULTS/tables/frontier_gpu_sst2_points.md, $RESULTS/figures/frontier_gpu_sst2_sst2.png).
#   QPEFT_GLUE_DIR=/path/to/glue bash scripts/gpu_frontier_sst2.sh          # the measurement
#   OUT=/tmp/g RESULTS=/tmp/g POINTS=quantum QPEFT_GLUE_DIR=... bash scripts/gpu_frontier_sst2.sh \
#       trainer.max_steps=2 trainer.eval_limit=50 trainer.device=cpu      # a smoke test on a CPU
set -u
PY=${PY:-python}
OUT=${OUT:-outputs}
RESULTS=${RESULTS:-results}
POINTS=${POINTS:-"head_only lora_r1 lora quantum frontier/paper_k8_l1 quantum_taylor frontier/pauli_kfull_l1 frontier/pauli_k8_l1_ws"}
mkdir -p "$OUT"
for adapter in $POINTS; do
  $PY run.py experiment=frontier_minilm task=glue/sst2 seed=0 adapter="$adapter" output_root="$OUT" \
    experiment_name=frontier_gpu_sst2 trainer.train_limit=null trainer.heldout=2000 trainer.threads=null \
    trainer.save_steps=100000 "$@" > "$OUT/frontier_gpu_sst2.$(echo "$adapter" | tr / _).log" 2>&1 &
done
wait
grep -h "done:\|qpeft error" "$OUT"/frontier_gpu_sst2.*.log
$PY -m qpeft.frontier --records "$OUT/frontier_gpu_sst2" --preset frontier_gpu_sst2 \
  --tables "$RESULTS/tables" --figures "$RESULTS/figures"
