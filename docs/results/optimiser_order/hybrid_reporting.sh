#!/usr/bin/env bash
# Issue 45, the optimiser-order study's second part: the hybrid and sphere-direction zeroth-order arms at their lrs
# (hybrid_chosen.sh, from the tuning runs at seed 10), then the attacks at the point each run stops, as in
# reporting.sh: the embedded default at seeds 0-2 (reporting/), the planted target at seeds 1-3 (planted_reporting/).
# usage: hybrid_reporting.sh CODE_DIR OUT_DIR
code=$1; out=$2
cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
source $code/docs/results/optimiser_order/hybrid_chosen.sh   # CHOSEN / PLANTED_CHOSEN[<mask>_<order>]=<lr>
declare -A ORDER=([hybrid]="method/optimizer=hybrid" [zosphere]="method/optimizer=zo method.optimizer.directions=sphere")
ATTACKS="robustness=standard robustness.families.mia=null robustness.families.probes=null"
ATTACKS+=" robustness.families.quantization.schemes=[rtn4,nf4] robustness.families.relearning.benign=false"
ATTACKS+=" robustness.families.relearning.search={trials:4,utility_margin:0.05}"
for target in default planted; do
  if [ $target = default ]; then seeds="0 1 2"; dir=$out/reporting; extra=""
  else seeds="1 2 3"; dir=$out/planted_reporting; extra="benchmark=planted"; fi
  mkdir -p $dir
  for seed in $seeds; do
    for arm in simu_hybrid fo_hybrid simu_zosphere fo_zosphere; do
      mask=${arm%%_*}; order=${arm#*_}
      if [ $target = default ]; then lr=${CHOSEN[$arm]}; else lr=${PLANTED_CHOSEN[$arm]}; fi
      run=$dir/${arm}_s$seed
      [ -f $run/results.json ] && continue
      $py run.py $extra method=$mask ${ORDER[$order]} method.optimizer.lr=$lr seed=$seed $ATTACKS \
        hydra.run.dir=$run > $run.log 2>&1
      echo "$(date -u +%T) $target $arm seed $seed rc=$?"
    done
  done
done
