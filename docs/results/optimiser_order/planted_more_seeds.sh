#!/usr/bin/env bash
# Issue 45: the planted target's arms where a lower order might forget more robustly at kept utility (zeroth order,
# Gaussian and sphere, under SIMU's mask and on every parameter) and their references (SIMU with Sophia, every
# parameter with AdamW), at 6 more seeds (4-9), at the lrs of planted_chosen.sh and hybrid_chosen.sh, with the same
# attacks; first seed 1 of two arms again, to check that this checkout gives the committed runs bit for bit.
# usage: planted_more_seeds.sh CODE_DIR OUT_DIR
code=$1; out=$2
cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
ATTACKS="robustness=standard robustness.families.mia=null robustness.families.probes=null"
ATTACKS+=" robustness.families.quantization.schemes=[rtn4,nf4] robustness.families.relearning.benign=false"
ATTACKS+=" robustness.families.relearning.search={trials:4,utility_margin:0.05}"
declare -A ARM=(
  [simu_sophia]="method=simu method/optimizer=sophia method.optimizer.lr=5e-5"
  [fo_adamw]="method=fo method/optimizer=adamw method.optimizer.lr=5e-5"
  [simu_zo]="method=simu method/optimizer=zo method.optimizer.directions=gaussian method.optimizer.lr=1e-3"
  [fo_zo]="method=fo method/optimizer=zo method.optimizer.directions=gaussian method.optimizer.lr=1e-3"
  [simu_zosphere]="method=simu method/optimizer=zo method.optimizer.directions=sphere method.optimizer.lr=1e-3"
  [fo_zosphere]="method=fo method/optimizer=zo method.optimizer.directions=sphere method.optimizer.lr=3e-4"
)
run() {  # dir, arm, seed
  [ -f $1/results.json ] && return
  $py run.py benchmark=planted ${ARM[$2]} seed=$3 $ATTACKS hydra.run.dir=$1 > $1.log 2>&1
  echo "$(date -u +%T) $2 seed $3 rc=$?"
}
mkdir -p $out/planted_check $out/planted_reporting
for arm in simu_sophia simu_zo; do run $out/planted_check/${arm}_s1 $arm 1; done
for seed in 4 5 6 7 8 9; do
  for arm in simu_sophia fo_adamw simu_zo fo_zo simu_zosphere fo_zosphere; do
    run $out/planted_reporting/${arm}_s$seed $arm $seed
  done
done
