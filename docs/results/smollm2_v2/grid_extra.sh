#!/usr/bin/env bash
# Issue 43: one lr past the grid's edge where an arm's best lay on it (simu: 2.5e-4 of 6.25e-5..2.5e-4; fo: 2.5e-5
# of 2.5e-5..1e-4). Same checkout, seed and cache as grid.sh; skips finished runs.
cd /work/v2runs/code
export PYTHONPATH=/work/v2runs/code/src SIMU_CACHE_DIR=/work/simu_cache_v2 HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=2
COMMON="experiment=smollm2_tofu_v2 benchmark.path=/work/shared/data/tofu seed=10"
run() {  # name, overrides...
  local name=$1; shift
  local dir=/work/v2runs/tuning/$name
  [ -f $dir/results.json ] && return
  echo "$(date -u +%H:%M:%S) start $name"
  /work/main/.venv/bin/python run.py $COMMON "$@" hydra.run.dir=$dir > /work/v2runs/tuning/$name.log 2>&1
  echo "$(date -u +%H:%M:%S) end $name rc=$?"
}
run simu_lr5e-4 method=simu method.optimizer.lr=5e-4
run fo_lr1.25e-5 method=fo method.optimizer.lr=1.25e-5
