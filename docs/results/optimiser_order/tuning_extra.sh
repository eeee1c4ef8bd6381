#!/usr/bin/env bash
# Issue 45: one more learning rate beyond the grid's edge where an arm's best lay on it, and zeroth order at
# larger rates (it reached no level at 1e-5 to 1e-3). usage: tuning_extra.sh CODE_DIR OUT_DIR
code=$1; out=$2
cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
for run in simu_zo_1e-2 fo_zo_1e-2 simu_zo_1e-1 fo_zo_1e-1 simu_zo_3e-3 fo_zo_3e-3 simu_sgd_3e-3 fo_sgd_3e-3 fo_adamw_1e-3 \
    simu_adamw_6.25e-5 simu_signsgd_6.25e-5 fo_sophia_6.25e-5; do
  mask=${run%%_*}; rest=${run#*_}; order=${rest%%_*}; lr=${rest#*_}
  dir=$out/tuning/${mask}_${order}_lr$lr
  [ -f $dir/results.json ] && continue
  $py run.py method=$mask method/optimizer=$order method.optimizer.lr=$lr seed=10 tuned.seeds=[10] \
    hydra.run.dir=$dir > $dir.log 2>&1
  echo "$(date -u +%T) $mask $order lr $lr rc=$?"
done
