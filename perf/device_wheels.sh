#!/usr/bin/env bash
# The wheels perf/device_check.sh installs on the lent GPU machine (no network there), into the git-ignored
# .whl/: every runtime dependency of this project, and of those dependencies, that the machine's image
# (/opt/torch/.venv, Python 3.12, torch 2.11.0+cu130, transformers 5.17.0, huggingface_hub 1.33.0; see the
# device tool's KINDS.md) lacks or holds in a version too old for pyproject.toml, one version each: the
# versions of the development venv the tests pass with. Not carried: torch (the image's 2.11 meets
# torch>=2.6), what the image has in a version that fits (lightning 2.6.6, torchmetrics 1.9.0, tokenizers
# 0.23.2, safetensors 0.8.0, accelerate 1.15.0, scipy, rich, matplotlib, pyyaml, numpy, pandas, pyarrow,
# xxhash, absl-py, six, joblib, tqdm, filelock, packaging, anyio, idna, h11, hf-xet), and wandb with its
# opentelemetry and pydantic stack (imported only under logger=wandb, which the check does not use).
# Run from the repository root, where PyPI is reachable: bash perf/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl \
  transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 \
  click==8.5.1 regex==2026.12.2 kernels==0.19.1 tomlkit==0.15.3 \
  hydra-core==1.3.8 omegaconf==2.3.1 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 \
  nltk==3.10.4 defusedxml==0.7.1
# published as source only: built here into pure-Python wheels (py3-none-any)
python3 -m pip wheel -q --no-deps --no-cache-dir -w .whl antlr4-python3-runtime==4.9.3 rouge-score==0.1.2
ls -1 .whl
du -sh .whl
