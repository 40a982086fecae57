#!/usr/bin/env bash
# Every GPU check of the render engine and the full benchmark, in one call on a bare CUDA machine
# (no internet: torch preinstalled, the other wheels installed by the caller). About 7 minutes on
# an H200 before the batching bench was added (--quick: the compiled comparison and the batching
# bench, 3.5-5 minutes; neither timing re-measured since; --flux: the Flux side, bench/flux_bench.py).
# Figures print as they come
# and land under $OUT (or ./out/gpu) as logs and JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$OUT/machine.txt"
status=0
if [ "${1:-}" = "--flux" ]; then
  # Flux side (issue 28): full-size random-weight Flux.1, bf16, 1024², ours vs stock FluxPipeline at
  # 1/5/12 conditions, eager and compiled, peak memory. [schnell] first (4 steps, short), then the
  # same eager with the dense joint mask, then [dev] (28 steps). Ours runs Flux's default joint
  # backend, packed (FlashAttention varlen in bf16). Never run on a GPU yet: expect to adjust the
  # timeouts on the first run.
  echo "== Flux.1 [schnell]: 4 steps, eager and compiled"
  timeout 240 python3 bench/flux_bench.py --shape full --variant schnell --compile --repeats 2 \
    --json "$OUT/flux_schnell.json" 2>&1 | grep -v Warning | tee "$OUT/flux_schnell.log" || status=1
  echo "== Flux.1 [schnell]: the dense joint mask (--attention sdpa), eager: the packed kernel's baseline"
  timeout 150 python3 bench/flux_bench.py --shape full --variant schnell --attention sdpa --repeats 2 \
    --json "$OUT/flux_schnell_sdpa.json" 2>&1 | grep -v Warning | tee "$OUT/flux_schnell_sdpa.log" || status=1
  echo "== Flux.1 [dev]: 28 steps, eager and compiled"
  timeout 420 python3 bench/flux_bench.py --shape full --variant dev --compile --repeats 1 \
    --json "$OUT/flux_dev.json" 2>&1 | grep -v Warning | tee "$OUT/flux_dev.log" || status=1
  exit $status
fi
if [ "${1:-}" = "--quick" ]; then
  # Compiled stock vs ours at 1/5/12 regions, end to end, peak memory, and ours against the eager
  # SDPA path: one process per side, compiling at once, then timing in turns (bench/gpu_quick.py).
  # QUICK_SIDES="stock flex sdpa" adds the FlexAttention path (its compile is the long pole: the
  # three sides took 256 s on an H200; stock + sdpa should take about 150 s). The default adds
  # "packed" (packed attention: FlashAttention varlen over the allowed pixel-token pairs, eager and
  # compiled) and "graphs" (the SDPA path under CUDA graphs, mode="reduce-overhead"), never measured yet;
  # QUICK_SIDES="stock-tuned tuned" compares both with diffusers' channels-last + inductor flags.
  sides="${QUICK_SIDES:-stock sdpa packed graphs}"
  rm -f "$OUT"/*.ready "$OUT"/*.done; for side in $sides; do rm -f "$OUT/$side.json"; done
  for side in $sides; do
    timeout 270 python3 bench/gpu_quick.py --side "$side" --sides "${sides// /,}" --dir "$OUT" 2>&1 \
      | grep -v Warning | tee "$OUT/quick_$side.log" &
  done
  wait
  python3 bench/gpu_quick.py summary "$OUT" | tee "$OUT/quick_summary.txt"
  echo "== same-shape batching: 512², 25 steps, 8 jobs, one by one vs batches of 2/4/8"
  timeout 150 python3 bench/batch_bench.py --full --repeats 1 --json "$OUT/batch.json" 2>&1 \
    | grep -v Warning | tee "$OUT/batch.log" || status=1
  for side in $sides; do grep -q '"error"' "$OUT/$side.json" 2>/dev/null && status=1; done
  exit $status
fi
echo "== full bench: 1024², 25 steps, fp16, eager and compiled"
timeout 330 python3 bench/render_bench.py --full --compile --repeats 2 --json "$OUT/bench.json" 2>&1 \
  | grep -v Warning | tee "$OUT/bench.log" || status=1
echo "== same-shape batching: 512², 25 steps, 4 jobs, one by one vs one batch (--quick: 8 jobs, 2/4/8)"
timeout 100 python3 bench/batch_bench.py --full --jobs 4 --batches 1,4 --repeats 1 --json "$OUT/batch.json" 2>&1 \
  | grep -v Warning | tee "$OUT/batch.log" || status=1
echo "== CUDA checks (tiny model)"
timeout 80 python3 bench/gpu_checks.py "$OUT/checks.json" 2>&1 | grep -v Warning | tee "$OUT/checks.log" || status=1
echo "== end to end with an fp16-safe VAE (eager, 5 regions)"
timeout 50 python3 bench/render_bench.py --full --fp16-vae --regions 5 --repeats 2 --json "$OUT/bench_fp16vae.json" \
  2>&1 | grep -v Warning | tee "$OUT/bench_fp16vae.log" || status=1
exit $status
