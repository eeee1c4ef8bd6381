#!/usr/bin/env bash
# Issue 45, the optimiser-order study's second part: 2510.00761's hybrid (method/optimizer=hybrid, 5 AdamW + 5
# R-AdaZO steps in turn) and zeroth order with its unit-sphere directions (zosphere; the first part's zo rows were
# Gaussian), each under SIMU's mask and on every parameter, at tuning seed 10, on the embedded default (tuning/)
# and on the planted target (planted_tuning/). usage: hybrid_tuning.sh CODE_DIR OUT_DIR
code=$1; out=$2
cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
declare -A ORDER=([hybrid]="method/optimizer=hybrid" [zosphere]="method/optimizer=zo method.optimizer.directions=sphere")
declare -A LRS=([hybrid]="6.25e-5 1.25e-4 2.5e-4 5e-4" [zosphere]="3e-3 1e-2 3e-2")
declare -A PLANTED_LRS=([hybrid]="2.5e-5 5e-5 1e-4 2e-4" [zosphere]="3e-4 1e-3 3e-3")
for target in default planted; do
  for order in hybrid zosphere; do
    for mask in simu fo; do
      if [ $target = default ]; then lrs=${LRS[$order]}; dir=$out/tuning; extra=""
      else lrs=${PLANTED_LRS[$order]}; dir=$out/planted_tuning; extra="benchmark=planted"; fi
      mkdir -p $dir
      for lr in $lrs; do
        run=$dir/${mask}_${order}_lr$lr
        [ -f $run/results.json ] && continue
        $py run.py $extra method=$mask ${ORDER[$order]} method.optimizer.lr=$lr seed=10 tuned.seeds=[10] \
          hydra.run.dir=$run > $run.log 2>&1
        echo "$(date -u +%T) $target $mask $order lr $lr rc=$?"
      done
    done
  done
done
# With zo_lr = lr the zeroth-order half wrecks the model before the first-order half forgets (R-AdaZO's first steps
# are up to 1 / sqrt(1 - 0.999) = 32 x lr per entry, in random directions): the hybrid's two lrs, tuned together.
# lr: the AdamW arm's tuned lr and twice it; zo_lr: lr / 100 and lr / 10.
declare -A FO_LRS=([default_simu]="1.25e-4 2.5e-4" [default_fo]="5e-4 1e-3" [planted_simu]="5e-5 1e-4" [planted_fo]="5e-5 1e-4")
for target in default planted; do
  for mask in simu fo; do
    if [ $target = default ]; then dir=$out/tuning; extra=""; else dir=$out/planted_tuning; extra="benchmark=planted"; fi
    for lr in ${FO_LRS[${target}_$mask]}; do
      for zo in $(python3 -c "print(f'{$lr/100:g} {$lr/10:g}')"); do
        run=$dir/${mask}_hybrid_lr${lr}_zo$zo
        [ -f $run/results.json ] && continue
        $py run.py $extra method=$mask method/optimizer=hybrid method.optimizer.lr=$lr method.optimizer.zo_lr=$zo \
          seed=10 tuned.seeds=[10] hydra.run.dir=$run > $run.log 2>&1
        echo "$(date -u +%T) $target $mask hybrid lr $lr zo_lr $zo rc=$?"
      done
    done
  done
done
# The best of both masks lay at the grid's corner (the larger lr, the smaller zo_lr): one step beyond it each way.
for run in simu:2.5e-4:2.5e-7 simu:5e-4:5e-6 simu:5e-4:5e-7 fo:1e-3:1e-6 fo:2e-3:2e-5 fo:2e-3:2e-6; do
  IFS=: read mask lr zo <<< "$run"
  dir=$out/tuning/${mask}_hybrid_lr${lr}_zo$zo
  [ -f $dir/results.json ] && continue
  $py run.py method=$mask method/optimizer=hybrid method.optimizer.lr=$lr method.optimizer.zo_lr=$zo \
    seed=10 tuned.seeds=[10] hydra.run.dir=$dir > $dir.log 2>&1
  echo "$(date -u +%T) default $mask hybrid lr $lr zo_lr $zo rc=$?"
done
