#!/usr/bin/env bash
# Issue 45, where the update lands: every method on a planted target, seeds 1-3 (the planted settings were
# tuned at seed 0: conf/tuned/planted_tiny_graddiff.yaml), spread (5% of every layer) and concentrated
# (20% of layer 2) layouts. usage: runs.sh CODE_DIR OUT_DIR
code=$1; out=$2
mkdir -p $out; cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
declare -A ARMS=(
  [fo]="method=fo" [so]="method=so" [simu]="method=simu"
  [random]="method=simu attribution=random" [oracle]="method=simu attribution=planted"
)
declare -A LAYOUTS=([spread]="" [concentrated]="benchmark.planted.layers=[2] benchmark.planted.fraction=0.2")
for layout in spread concentrated; do
  for seed in 1 2 3; do
    for arm in oracle simu random fo so; do
      dir=$out/$layout/${arm}_s$seed; mkdir -p $out/$layout
      [ -f $dir/results.json ] && continue
      $py run.py benchmark=planted seed=$seed ${ARMS[$arm]} ${LAYOUTS[$layout]} hydra.run.dir=$dir > $dir.log 2>&1
      echo "$(date -u +%T) $layout $arm seed $seed rc=$?"
    done
  done
done
