#!/usr/bin/env bash
# Issue 45, optimiser order on the planted target: every arm at its tuned lr (planted_chosen.sh, from
# planted_tuning/ at seed 10), seeds 1-3, then the attacks at the point each run stops (matched forgetting: forget EM <= 0.1):
# 4-bit (rtn4, nf4) and the worst-case relearning search (Optuna, 4 trials, retain within 0.05).
# usage: reporting.sh CODE_DIR OUT_DIR [SEEDS]
code=$1; out=$2; seeds=${3:-"1 2 3"}
mkdir -p $out/planted_reporting; cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
source $code/docs/results/optimiser_order/planted_chosen.sh   # CHOSEN[<mask>_<order>]=<lr>
ATTACKS="robustness=standard robustness.families.mia=null robustness.families.probes=null"
ATTACKS+=" robustness.families.quantization.schemes=[rtn4,nf4] robustness.families.relearning.benign=false"
ATTACKS+=" robustness.families.relearning.search={trials:4,utility_margin:0.05}"
for seed in $seeds; do
  for arm in "${!CHOSEN[@]}"; do
    mask=${arm%%_*}; order=${arm#*_}
    dir=$out/planted_reporting/${arm}_s$seed
    [ -f $dir/results.json ] && continue
    $py run.py benchmark=planted method=$mask method/optimizer=$order method.optimizer.lr=${CHOSEN[$arm]} seed=$seed $ATTACKS \
      hydra.run.dir=$dir > $dir.log 2>&1
    echo "$(date -u +%T) $arm seed $seed rc=$?"
  done
done
