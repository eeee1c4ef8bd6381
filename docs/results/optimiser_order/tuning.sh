#!/usr/bin/env bash
# Issue 45, optimiser order on the embedded default: each order under SIMU's mask (method=simu) and on every
# parameter (method=fo), 3 learning rates each at tuning seed 10. usage: tuning.sh CODE_DIR OUT_DIR
code=$1; out=$2
mkdir -p $out/tuning; cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
declare -A LRS=(
  [sophia]="1.25e-4 2.5e-4 5e-4" [adamw]="1.25e-4 2.5e-4 5e-4" [signsgd]="1.25e-4 2.5e-4 5e-4"
  [sgd]="1e-2 3e-2 1e-1" [zo]="1e-5 1e-4 1e-3"
)
for order in sophia adamw signsgd sgd zo; do
  for mask in simu fo; do
    for lr in ${LRS[$order]}; do
      dir=$out/tuning/${mask}_${order}_lr$lr
      [ -f $dir/results.json ] && continue
      $py run.py method=$mask method/optimizer=$order method.optimizer.lr=$lr seed=10 tuned.seeds=[10] \
        hydra.run.dir=$dir > $dir.log 2>&1
      echo "$(date -u +%T) $mask $order lr $lr rc=$?"
    done
  done
done
