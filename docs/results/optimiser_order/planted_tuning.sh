#!/usr/bin/env bash
# Issue 45, optimiser order on the planted target (benchmark=planted): each order under SIMU's mask and on every
# parameter, 3 learning rates each at tuning seed 10 (its own planting of P). usage: planted_tuning.sh CODE OUT
code=$1; out=$2
mkdir -p $out/planted_tuning; cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
declare -A LRS=(
  [sophia]="2.5e-5 5e-5 1e-4" [adamw]="2.5e-5 5e-5 1e-4" [signsgd]="2.5e-5 5e-5 1e-4"
  [sgd]="3e-3 1e-2 3e-2" [zo]="1e-3 3e-3 1e-2"
)
for order in sophia adamw signsgd sgd zo; do
  for mask in simu fo; do
    for lr in ${LRS[$order]}; do
      dir=$out/planted_tuning/${mask}_${order}_lr$lr
      [ -f $dir/results.json ] && continue
      $py run.py benchmark=planted method=$mask method/optimizer=$order method.optimizer.lr=$lr seed=10 \
        tuned.seeds=[10] hydra.run.dir=$dir > $dir.log 2>&1
      echo "$(date -u +%T) $mask $order lr $lr rc=$?"
    done
  done
done
