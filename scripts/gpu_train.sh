#!/bin/bash
# Fine-tune GUN and the ASP model together on one CUDA GPU inside a fixed time budget, e.g. a
# lent accelerator with minutes to spare. Both trainings share the GPU; CPU data-loader workers
# render the synthetic frames on the fly (no data travels). A short calibration run of each
# network measures its seconds per iteration with both running, then each poly schedule is sized
# to end inside the budget, so the learning rate decays to zero instead of being cut off. The fp16
# weights, log.jsonl files and logs land in $OUT.
#
# Needs python3 with torch, torchvision, numpy, safetensors, pyyaml, opencv and tqdm, nothing
# else: it runs `python3 -m seg_perception.train` from the checkout (no install, no ROS, no
# rosbags), so it works on a bare CUDA image.
#
#   OUT=runs/gpu scripts/gpu_train.sh
#   OUT=runs/gpu2 BUDGET=290 GUN_INIT=runs/gpu/gun_gpu.safetensors \
#       ASP_INIT=runs/gpu/asp_gpu.safetensors GUN_LR=0.004 ASP_LR=0.003 GUN_SEED=43 ASP_SEED=44 \
#       scripts/gpu_train.sh
#
# Environment (defaults in brackets): OUT [runs/gpu]; BUDGET seconds from start to the written
# weights [560]; GUN_INIT, ASP_INIT [the shipped files]; GUN_LR [0.008], ASP_LR [0.006];
# GUN_SEED [41], ASP_SEED [42] (frame stream and data order); GUN_BATCH [16 full 512x1024 frames],
# ASP_BATCH [8]; GUN_WORKERS [9], ASP_WORKERS [4] (render cost: GUN's frames are 4x larger);
# DEVICE [cuda]; PY [python3]; CAL_ITERS [40]; MIN_ITERS [200] (a schedule shorter than this is
# not started); DRY_RUN=1 prints the two training commands and exits.
# models/README.md gives what this made on an H200 (16 cores) and the commands used.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-560}
CAL_ITERS=${CAL_ITERS:-40}
MIN_ITERS=${MIN_ITERS:-200}
DEVICE=${DEVICE:-cuda}
GUN_SEED=${GUN_SEED:-41}
ASP_SEED=${ASP_SEED:-42}

# GUN: full 512x1024 frames (crop = frame size) at scale 0.75-1.5: the GPU is idle while CPUs
# render, so each rendered frame is used whole, not a 256x512 quarter of it. fp32 (TF32 convs):
# the data workers, not the GPU, bound the step. No frame cache: a one-off run never reads a
# frame twice, and writing the first 8000 as PNGs made the first minutes twice as slow as the
# rest (which also threw the calibration off).
GUN=(--config config/train/gun_synth.yaml --no-progress --set
     "model.init_weights=${GUN_INIT:-models/gun_synth.safetensors}"
     'augment.scale=[0.75, 1.5]' 'augment.crop=[512, 1024]' "data.batch_size=${GUN_BATCH:-16}"
     "data.workers=${GUN_WORKERS:-9}" optim.amp=false "optim.lr=${GUN_LR:-0.008}"
     "run.device=$DEVICE" run.threads=2 "data.train.train.seed=$GUN_SEED" "run.seed=$GUN_SEED"
     data.train.train.cache=false run.log_every=10)
# The ASP model as the shipped file is built (backbone width 0.625); the recipe's fp32.
ASP=(--config config/train/asp_synth.yaml --no-progress --set
     "model.init_weights=${ASP_INIT:-models/asp_synth.safetensors}"
     model.switches.backbone_width=0.625 "data.batch_size=${ASP_BATCH:-8}"
     "data.workers=${ASP_WORKERS:-4}" "optim.lr=${ASP_LR:-0.006}" "run.device=$DEVICE"
     run.threads=2 "data.train.train.seed=$ASP_SEED" "run.seed=$ASP_SEED"
     data.train.train.cache=false run.log_every=10)
TRAIN=("$PY" -m seg_perception.train)

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${TRAIN[@]}" --out "$OUT/gun" "${GUN[@]}"; echo
  printf '%q ' "${TRAIN[@]}" --out "$OUT/asp" "${ASP[@]}"; echo
  exit 0
fi

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT"
if [ -e "$OUT/gun" ] || [ -e "$OUT/asp" ]; then
  echo "gpu_train.sh: $OUT/gun or $OUT/asp exists; choose a new OUT" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader
"$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
echo "cpus: $(nproc), $(lscpu | sed -n 's/^Model name: *//p')"

# 1. Calibration: both at once, as they will run; seconds per iteration from iteration 20 on.
CAL=("stages.0.length=$CAL_ITERS" run.val_every=1000000 data.val_frames=1
     run.checkpoint_every=1000000)
"${TRAIN[@]}" --out "$OUT/cal_gun" "${GUN[@]}" "${CAL[@]}" >"$OUT/cal_gun.log" 2>&1 & P1=$!
"${TRAIN[@]}" --out "$OUT/cal_asp" "${ASP[@]}" "${CAL[@]}" >"$OUT/cal_asp.log" 2>&1 & P2=$!
wait $P1 || tail -n 25 "$OUT/cal_gun.log"
wait $P2 || tail -n 25 "$OUT/cal_asp.log"
# 45 s stay for the final validations and the exports.
WINDOW=$(( BUDGET - $(elapsed) - 45 ))
plan() {  # iterations that fit 85 % of the window (validations and checkpoints take the rest);
  # 0 (that network is skipped) where its calibration log cannot tell, with the reason on stderr
  "$PY" -c "from seg_perception.train.runlog import planned_iterations as p
print(p('$1', $WINDOW))" || echo 0
}
LG=$(plan "$OUT/cal_gun/log.jsonl")
LA=$(plan "$OUT/cal_asp/log.jsonl")
echo "calibration done at $(elapsed) s; training window $WINDOW s: GUN $LG, ASP $LA iterations"

# 2. Both trainings; `timeout` only guards the budget (checkpoints every sixth of a schedule).
pids=()
if [ "$LG" -ge "$MIN_ITERS" ]; then
  timeout $((WINDOW + 15)) "${TRAIN[@]}" --out "$OUT/gun" "${GUN[@]}" "stages.0.length=$LG" \
    "run.val_every=$((LG / 2))" "run.checkpoint_every=$((LG / 6))" >"$OUT/gun.log" 2>&1 &
  pids+=($!)
fi
if [ "$LA" -ge "$MIN_ITERS" ]; then
  timeout $((WINDOW + 15)) "${TRAIN[@]}" --out "$OUT/asp" "${ASP[@]}" "stages.0.length=$LA" \
    "run.val_every=$((LA / 2))" "run.checkpoint_every=$((LA / 6))" >"$OUT/asp.log" 2>&1 &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
echo "training done at $(elapsed) s"

# 3. fp16 weights of each run's last checkpoint.
for m in gun asp; do
  [ -d "$OUT/$m" ] || continue
  "${TRAIN[@]}" --export-weights "$OUT/$m" "$OUT/${m}_gpu.safetensors" --dtype fp16
  grep -a "validation\|Error" "$OUT/$m.log" | tail -n 4
done
echo "all done at $(elapsed) s"
