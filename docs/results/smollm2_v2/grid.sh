#!/usr/bin/env bash
# Issue 43 tuning grid: every arm at 3 learning rates, tuning seed 10; skips runs already finished.
# usage: [ONLY=<regex of run names>] [OMP_NUM_THREADS=1] CODE=<checkout at 89ced05> SIMU_CACHE_DIR=... TOFU=../shared/data/tofu OUT=<runs> PYTHON=<venv python> ./grid.sh
cd ${CODE:?a checkout at 89ced05}  # one fixed commit for every run of the study
export PYTHONPATH=${CODE:?a checkout at 89ced05}/src SIMU_CACHE_DIR=${SIMU_CACHE_DIR:?the cache holding the v2 target} HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
COMMON="experiment=smollm2_tofu_v2 benchmark.path=${TOFU:?the TOFU folder} seed=10"
run() {  # name, overrides...
  local name=$1; shift
  local dir=${OUT:?where the runs go}/$name
  [ -f $dir/results.json ] && return
  [[ -n $ONLY && ! $name =~ $ONLY ]] && return  # ONLY=<regex>: one lane of runs, so two lanes can share the machine
  echo "$(date -u +%H:%M:%S) start $name"
  ${PYTHON:-python} run.py $COMMON "$@" hydra.run.dir=$dir > ${OUT:?where the runs go}/$name.log 2>&1
  echo "$(date -u +%H:%M:%S) end $name rc=$?"
}
for lr in 1.25e-4 6.25e-5 2.5e-4; do run simu_lr$lr method=simu method.optimizer.lr=$lr; done
for lr in 5e-5 2.5e-5 1e-4; do run fo_lr$lr method=fo method.optimizer.lr=$lr; done
for lr in 5e-5 2.5e-5 1e-4; do run so_lr$lr method=so method.optimizer.lr=$lr; done
for lr in 1.25e-4 6.25e-5 2.5e-4; do run random_lr$lr method=simu attribution=random method.optimizer.lr=$lr; done
for lr in 1.25e-4 6.25e-5 2.5e-4; do run attention_lr$lr method=simu method.trainable=attention method.optimizer.lr=$lr; done
for lr in 5e-4 2e-3 8e-3; do run down_proj_lr$lr method=simu method.trainable=down_proj method.optimizer.lr=$lr; done
# one lr past the grid's edge where an arm's best lay on it (simu: 2.5e-4, its top; fo: 2.5e-5, its bottom;
# so: 1e-4, its top; attention and random neurons: 2.5e-4, the top of theirs)
run simu_lr5e-4 method=simu method.optimizer.lr=5e-4
run fo_lr1.25e-5 method=fo method.optimizer.lr=1.25e-5
run so_lr2e-4 method=so method.optimizer.lr=2e-4
run attention_lr5e-4 method=simu method.trainable=attention method.optimizer.lr=5e-4
run random_lr5e-4 method=simu attribution=random method.optimizer.lr=5e-4
echo "$(date -u +%H:%M:%S) grid done"
