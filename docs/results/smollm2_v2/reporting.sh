#!/usr/bin/env bash
# Issue 43, part 2: every arm at its chosen lr (chosen.sh, written from the tuning report: held-out retain ROUGE-L at
# forget ROUGE-L 0.3, seed 10; choose.py writes it), at the reporting seeds 0, 1, 2, one seed at a time so that each can be committed.
# usage: [ARMS="<arms>"] [OMP_NUM_THREADS=1] CODE=<checkout at 89ced05> SIMU_CACHE_DIR=... TOFU=../shared/data/tofu OUT=<runs> PYTHON=<venv python> ./reporting.sh SEED
seed=${1:?the reporting seed (0, 1 or 2)}
here=$(cd "$(dirname "$0")" && pwd)
source $here/chosen.sh   # CHOSEN[<arm>]=<lr>
cd ${CODE:?a checkout at 89ced05}
export PYTHONPATH=$CODE/src SIMU_CACHE_DIR=${SIMU_CACHE_DIR:?the cache holding the v2 target} HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
COMMON="experiment=smollm2_tofu_v2 benchmark.path=${TOFU:?the TOFU folder} seed=$seed"
declare -A ARM=(
  [simu]="method=simu" [fo]="method=fo" [so]="method=so" [random]="method=simu attribution=random"
  [attention]="method=simu method.trainable=attention" [down_proj]="method=simu method.trainable=down_proj"
)
for arm in ${ARMS:-simu fo so random attention down_proj}; do  # ARMS: one lane's arms, so two lanes can share the machine
  dir=${OUT:?where the runs go}/${arm}_s$seed
  [ -f $dir/results.json ] && continue
  echo "$(date -u +%H:%M:%S) start ${arm}_s$seed"
  ${PYTHON:-python} run.py $COMMON ${ARM[$arm]} method.optimizer.lr=${CHOSEN[$arm]:?no lr chosen for $arm in chosen.sh} hydra.run.dir=$dir > $dir.log 2>&1
  echo "$(date -u +%H:%M:%S) end ${arm}_s$seed rc=$?"
done
