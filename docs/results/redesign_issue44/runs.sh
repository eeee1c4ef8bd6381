#!/usr/bin/env bash
# Issue 44: the four runs that must end bit for bit where they end at the commit before the redesign.
# usage: runs.sh CODE_DIR OUT_DIR
code=$1; out=$2
mkdir -p $out; cd $code
export PYTHONPATH=$code/src SIMU_CACHE_DIR=$out/cache HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
py=/work/main/.venv/bin/python
$py run.py hydra.run.dir=$out/default > $out/default.log 2>&1; echo "default rc=$?"
$py run.py robustness=standard hydra.run.dir=$out/robustness > $out/robustness.log 2>&1; echo "robustness rc=$?"
$py run.py unlearning/requests=sequential benchmark.forget_fraction=0.167 hydra.run.dir=$out/requests > $out/requests.log 2>&1; echo "requests rc=$?"
$py run.py benchmark=planted hydra.run.dir=$out/planted > $out/planted.log 2>&1; echo "planted rc=$?"
