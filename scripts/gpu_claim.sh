#!/usr/bin/env bash
# Issue 32, item 9: the claim study's points on SST-2's FULL training set, and the open GPU figures, on one GPU in
# about 9 minutes (docs/claim.md, "On a GPU: the full training set").
#
# 1. The bench alone on the GPU (bf16 autocast, DeBERTaV3-base shape, batch 32 x 128): LoRA r=8, Pauli K=8 and
#    the full-rank default: train-step time and step peak memory against LoRA's.
# 2. run.py's bf16 (and fp32) step time for the same shape, head alone / LoRA / the default, 30 steps each, one
#    sweep alone on the GPU (scripts/gpu_check.py --only deberta).
# 3. The ten claim points (docs/claim.md) on every SST-2 training phrase but the clean 500 held out (about 60,000
#    after the clashes are dropped): one epoch at batch 32 (about 1,880 steps), float32 as on the CPU, every
#    adapter and the head at the shared lr 8e-4 (fixed before the runs: nothing is chosen here), seeds 0, 1 and 2,
#    learning curve every 400 steps. Up to $PAR runs share the GPU, seed 0 of every point first; none starts after
#    START_BY seconds and any still running at STOP_BY is stopped, so what finished comes back.
#
# Everything lands in $OUT (at most 8 files): gpu_claim.log, nvidia-smi.txt, bench-bf16.{md,csv}, check.tar.gz
# (gpu_check's summary and logs) and claim_gpu_sst2.tar.gz (each finished run's record.json and log).
#   QPEFT_GLUE_DIR=<glue> MINILM=<model folder> OUT=<dir> bash scripts/gpu_claim.sh
# On a lent machine that gets a copy of the checkout (docs/claim.md, "On a GPU"): carry the wheels
# (scripts/offline_wheels.py), SST-2, the MiniLM pack (../shared/tools/minilm_pack.py) and a bare clone of HEAD
# (`git clone --bare --depth 1 file://$PWD .gpu/repo.git`), and point git at that clone before running:
# `export GIT_DIR=$PWD/.gpu/repo.git GIT_WORK_TREE=$PWD; git read-tree HEAD`. The copy's own .git there can be
# older than HEAD, and the records would then name that commit with a diff.
#   ... SKIP_FIGURES=1 PAR=2 POINTS="claim/head_only_lr frontier/lora_r1_alr" SEEDS=0 \
#       bash scripts/gpu_claim.sh trainer.max_steps=2 trainer.eval_limit=20     # a smoke test on a CPU
set -u
PY=${PY:-python}
OUT=${OUT:?set OUT to the folder the results go to}
MINILM=${MINILM:?set MINILM to the all-MiniLM-L6-v2 folder (weights and tokenizer)}
: "${QPEFT_GLUE_DIR:?set QPEFT_GLUE_DIR to the GLUE folder (SST-2 in it)}"
PAR=${PAR:-15}
SEEDS=${SEEDS:-"0 1 2"}
START_BY=${START_BY:-390}   # seconds after the start: no claim run starts later
STOP_BY=${STOP_BY:-520}     # seconds after the start: claim runs still going are stopped
POINTS=${POINTS:-"frontier/quantum_kfull_l1_ws_alr frontier/lora_r1_alr frontier/lora_r8_alr claim/lora_qv_r1_alr
frontier/vera_r256_alr claim/head_only_lr frontier/quantum_k64_l1_ws_alr claim/paper_k8_l1_alr
frontier/quantum_taylor_k1_o8_alr frontier/fourierft_n100_alr"}
export PY MINILM T0=$(date +%s) START_BY STOP_BY HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EXTRA="$*"
mkdir -p "$OUT"
export RUNS=$(mktemp -d)
exec > >(tee "$OUT/gpu_claim.log") 2>&1
echo "gpu_claim: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "${SKIP_FIGURES:-}" ]; then
  echo "== 1. bench (bf16 autocast, DeBERTaV3-base shape, batch 32 x 128) at $(( $(date +%s) - T0 ))s"
  $PY -m qpeft.bench --device cuda --dtype bf16 --batch 32 --seq 128 --steps 20 --warmup 3 --infer-steps 2 \
    --methods lora_r8,quantum_k8_l1,quantum_kfull_l1 --out "$OUT" --name bench-bf16
  echo "== 2. run.py step time (DeBERTaV3-base shape, 30 steps of batch 32 x 128) at $(( $(date +%s) - T0 ))s"
  $PY scripts/gpu_check.py --only deberta_v3_base --methods head_only,lora,quantum --steps 30 --parallel 1 --no-bench \
    --tokenizer "$MINILM" --out "$RUNS/check"
  tar -czf "$OUT/check.tar.gz" -C "$RUNS" check
fi

echo "== 3. claim points on SST-2's full training set at $(( $(date +%s) - T0 ))s: $PAR at a time"
run_one() {  # <adapter> <seed>: one run (with the script's own arguments as overrides), unless it is too late
  local adapter=$1 seed=$2 now lr
  now=$(( $(date +%s) - T0 ))
  if [ "$now" -ge "$START_BY" ]; then echo "not started (at ${now}s): $adapter seed $seed"; return; fi
  case $adapter in *head_only*) lr="adapter.lr=0.0008" ;; *) lr="adapter.adapter_lr=0.0008" ;; esac
  timeout $(( STOP_BY - now )) $PY run.py experiment=claim_minilm task=glue/sst2 adapter="$adapter" "$lr" \
    seed="$seed" experiment_name=claim_gpu_sst2 output_root="$RUNS/out" backbone.source="$MINILM" \
    trainer.train_limit=null trainer.max_steps=-1 trainer.eval_steps=400 trainer.save_steps=100000 \
    trainer.precision=fp32 trainer.threads=1 $EXTRA > "$RUNS/$(echo "$adapter" | tr / _).seed$seed.log" 2>&1
  echo "$adapter seed $seed: exit $? at $(( $(date +%s) - T0 ))s; $(grep -h 'done:' "$RUNS/$(echo "$adapter" | tr / _).seed$seed.log" | cut -c1-160)"
}
export -f run_one
for seed in $SEEDS; do for adapter in $POINTS; do echo "$adapter $seed"; done; done |
  xargs -P "$PAR" -L 1 bash -c 'run_one "$@"' _ 2>&1 | sed 's/^/  /'
echo "== collecting at $(( $(date +%s) - T0 ))s"
(cd "$RUNS" && find out -name record.json > records.txt; tar -czf "$OUT/claim_gpu_sst2.tar.gz" -T records.txt ./*.log)
echo "$(wc -l < "$RUNS/records.txt") records; done at $(( $(date +%s) - T0 ))s"
