python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 || exit
B="python3 scripts/bench.py --device cuda --batch 32 --seq 128 --out $OUT"
timeout 150 $B --dtype bf16 --steps 20 --warmup 3 --infer-steps 10 --name nvidia-h200-bf16 > $OUT/bench-bf16.log 2>&1
timeout 150 $B --dtype fp32 --steps 20 --warmup 3 --infer-steps 10 --methods head_only,lora_r8,oft_b32,quantum_k8_l1,quantum_kfull_l1,quantum_kfull_l1_unfolded,quantum_taylor_k1 --name nvidia-h200 > $OUT/bench-fp32.log 2>&1
timeout 90 $B --dtype bf16 --steps 2 --warmup 2 --infer-steps 1 --methods lora_r8,quantum_k8_l1,quantum_kfull_l1 --profile --out /tmp/p --name p > $OUT/profile-bf16.log 2>&1
for f in $OUT/bench-bf16.log $OUT/bench-fp32.log; do tail -n 4 $f; done; grep -E "^==|Self CUDA time total|Self CPU time total" $OUT/profile-bf16.log
