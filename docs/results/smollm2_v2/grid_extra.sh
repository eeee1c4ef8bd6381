#!/usr/bin/env bash
# Issue 43: one lr past the tuning grid's edge where an arm's best lay on it (simu: 2.5e-4, the top of 6.25e-5..2.5e-4;
# fo: 2.5e-5, the bottom of 2.5e-5..1e-4), at seed 10, after grid.sh and with its settings; skips finished runs.
# usage: CODE=<checkout at 89ced05> SIMU_CACHE_DIR=... TOFU=../shared/data/tofu OUT=<runs> PYTHON=<venv python> ./grid_extra.sh
cd ${CODE:?a checkout at 89ced05}
export PYTHONPATH=$CODE/src SIMU_CACHE_DIR=${SIMU_CACHE_DIR:?the cache holding the v2 target} HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=2
COMMON="experiment=smollm2_tofu_v2 benchmark.path=${TOFU:?the TOFU folder} seed=10"
run() {  # name, overrides...
  local name=$1; shift
  local dir=${OUT:?where the runs go}/$name
  [ -f $dir/results.json ] && return
  echo "$(date -u +%H:%M:%S) start $name"
  ${PYTHON:-python} run.py $COMMON "$@" hydra.run.dir=$dir > $OUT/$name.log 2>&1
  echo "$(date -u +%H:%M:%S) end $name rc=$?"
}
run simu_lr5e-4 method=simu method.optimizer.lr=5e-4
run fo_lr1.25e-5 method=fo method.optimizer.lr=1.25e-5
