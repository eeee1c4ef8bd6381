#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md, "The device check"), one call of the device tool on one H100:
#   bash perf/device_check.sh        (carry .whl; made by perf/device_wheels.sh; under 9 minutes in all)
# Steps, each time-boxed, each run whatever the one before it did: install (the wheels into /tmp/site),
# versions (nvidia-smi, package versions, the project imports), default (the embedded default on the GPU,
# every forward pass's device recorded), utilisation (python -m perf --only utilisation: MFU of fo/so/simu at
# OLMo-1B size in bf16, attribution tokens/s), fsdp (an OLMo-1B-sized target through FSDP2 on one GPU, bf16,
# activation checkpointing, a few SIMU steps, "after" and the attacks). Writes under $OUT: device_check.json
# (per step: ok, seconds, figures), versions.txt, forwards_{default,fsdp}.json, utilisation.json,
# results_{default,fsdp}.json and logs.txt (each step's log, its end), and a line per step to stdout.
# DEVICE_CHECK_STEPS="versions fsdp": only those steps (and install), e.g. to run a failed one again.
# DEVICE_CHECK_DRY=1: the same commands on the CPU at tiny sizes (the venv's python3, no wheels), to prove
# the commands, the override names and the summary where no GPU is.
cd "$(dirname "$0")/.." || exit 1
O=${OUT:-/tmp/device_check_out} W=/tmp/device_check DRY=${DEVICE_CHECK_DRY:-0}
rm -rf "$W" && mkdir -p "$W" "$O" || exit 1
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# transformers >= 5.2x with `kernels` swaps layers for hub kernels on CUDA: a loaded OLMo model's first eval()
# after a train() fetches kernels-community/activation for SiLU, which offline raises ValueError (no network
# there); USE_HUB_KERNELS=0 keeps torch's own layers, as on a CPU (USE_HUB_KERNELS=1 to see it fail)
export USE_HUB_KERNELS=${USE_HUB_KERNELS:-0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
# each step's limit below; all together stop 525 s after the start (15 s left for the summary: under 9 min)
SCALE=1 BUDGET=525 DEVICE=cuda CPU=() SIZES=(model.tiny.hidden_size=2048 model.tiny.num_layers=16 model.tiny.num_heads=16
  model.tiny.intermediate_size=8192) PROFILE=full
if [ "$DRY" = 1 ]; then
  SCALE=5 BUDGET=3000 DEVICE=cpu CPU=(trainer.accelerator=cpu) PROFILE=smoke  # 2 shared CPU cores: 5x the time
  SIZES=(model.tiny.hidden_size=64 model.tiny.num_layers=2 model.tiny.num_heads=2 model.tiny.intermediate_size=128)
fi

# every attack family on the FSDP2-sharded model (they work on a plain model of its gathered weights)
ATTACKS=(robustness.families.relearning.steps=2 'robustness.families.quantization.schemes=[rtn8]')
DEADLINE=$((SECONDS + BUDGET))
step() { # name seconds command...: time-boxed, its log in $W/name.log, GPU memory and utilisation sampled
  local name=$1 seconds=$(($2 * SCALE)) left=$((DEADLINE - SECONDS - 15)) start=$EPOCHREALTIME sampler=
  shift 2
  [[ -n $DEVICE_CHECK_STEPS && " $DEVICE_CHECK_STEPS install " != *" $name "* ]] && return
  ((left < seconds)) && seconds=$left
  if ((seconds < 10)); then # no time left: skipped (exit status 125)
    printf '%s\t125\t%s\t%s\t0\n' "$name" "$start" "$start" >>"$W/steps.tsv" && echo "device_check: $name skipped"
    return
  fi
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 >"$W/$name.smi" &
    sampler=$!
  fi
  timeout -k 10 "$seconds" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$start" "$EPOCHREALTIME" "$seconds" >>"$W/steps.tsv"
  echo "device_check: $name rc=$rc ($(((${EPOCHREALTIME/./} - ${start/./}) / 1000000)) s of $seconds)"
}

if [ "$DRY" != 1 ]; then
  step install 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
cat >"$W/versions.py" <<'PY'
import importlib.metadata as md, sys, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, gpu)
for p in ("transformers huggingface_hub tokenizers safetensors accelerate kernels lightning torchmetrics hydra-core "
          "omegaconf datasets pyarrow fsspec pandas numpy scipy regex click rouge_score nltk triton").split():
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "missing")
import datasets, simu_lightning.pipeline, perf.utilisation  # every import the steps make
datasets.Dataset.from_dict({"a": [1]})
print("imports ok")
PY
step versions 40 bash -c "{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  PYTHONPATH=$PWD:$PYTHONPATH python3 $W/versions.py; } >$O/versions.txt 2>&1"

step default 170 env SIMU_FORWARD_DEVICES="$O/forwards_default.json" python3 run.py "${CPU[@]}" \
  hydra.run.dir="$W/default" paths.cache_dir="$W/cache"
cp "$W/default/results.json" "$O/results_default.json" 2>/dev/null

step utilisation 170 python3 -m perf --only utilisation --profile "$PROFILE" --out "$O/utilisation.json"

step fsdp 240 env SIMU_FORWARD_DEVICES="$O/forwards_fsdp.json" python3 run.py "${CPU[@]}" trainer=fsdp \
  trainer.devices=1 parallel.mixed_precision=bf16 parallel.activation_checkpointing=true optim.compact_state=true \
  "${SIZES[@]}" model.finetune.epochs=1 trainer.max_epochs=1 evaluation.every_n_steps=0 unlearning.stop_when=null \
  evaluation.max_new_tokens=8 attribution.m=4 checkpoint.every_n_epochs=null robustness=standard \
  "${ATTACKS[@]}" \
  robustness.families.mia.gradnorm=false robustness.families.probes.paraphrase=false \
  hydra.run.dir="$W/fsdp" paths.cache_dir="$W/cache"
cp "$W/fsdp/results.json" "$O/results_fsdp.json" 2>/dev/null

for f in "$W"/*.log; do printf '\n===== %s (its last 200 lines)\n' "$(basename "$f")"; tail -n 200 "$f"; done >"$O/logs.txt"
python3 - "$W" "$O" "$DEVICE" "$DRY" <<'PY'
import json, sys
from pathlib import Path

work, out, device, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"


def read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_figures(name):
    """A run's figures, and whether every forward pass of a whole model ran on the expected device."""
    results, forwards = read(out / f"results_{name}.json"), read(out / f"forwards_{name}.json")
    figures = {"forward_passes": forwards}
    if forwards is not None:
        figures["off_device"] = {s: c for s, c in forwards.items() if set(c) - {device}}
    if results:
        after = results.get("after", {})
        steps = results.get("stopped", {}).get("step")
        unlearning = results.get("timings_s", {}).get("unlearning")
        figures |= {
            "steps": steps,
            "stopped": results.get("stopped"),
            "timings_s": results.get("timings_s"),
            "step_s": round(unlearning / steps, 3) if steps and unlearning is not None else None,
            "after_forget_em": after.get("forget", {}).get("exact_match"),
            "after_retain_em": after.get("retain", {}).get("exact_match"),
            "memory_mb_per_process": results.get("memory_mb_per_process"),
            "processes": results.get("processes"),
            "robustness": sorted(results.get("robustness", {})),
        }
    problems = [] if results else ["no results.json"]
    if forwards is None:
        problems.append("no forward-pass record")
    elif figures["off_device"]:
        problems.append(f"forward passes off {device}: {figures['off_device']}")
    return figures, problems


def utilisation_figures():
    results = (read(out / "utilisation.json") or {}).get("utilisation")
    if not results:
        return {}, ["no utilisation results"]
    keep = ("device", "size", "peak_bf16_tflops", "step", "attribution", "_seconds")
    return {k: results.get(k) for k in keep}, [] if results.get("device") == device else [f"ran on {results['device']}"]


summary = {"device": device, "dry_run": dry, "steps": {}}
for line in (work / "steps.tsv").read_text().splitlines() if (work / "steps.tsv").exists() else []:
    name, rc, start, end, limit = line.split("\t")
    entry = {"rc": int(rc), "seconds": round(float(end) - float(start), 1), "limit_s": int(limit)}
    problems = [] if rc == "0" else [{"124": "timed out", "137": "timed out", "125": "skipped: no time left"}.get(rc, f"exit status {rc}")]
    figures = {}
    if name in ("default", "fsdp"):
        figures, more = run_figures(name)
        problems += more
    elif name == "utilisation":
        figures, more = utilisation_figures()
        problems += more
    elif name == "versions":
        figures = {"versions": (out / "versions.txt").read_text().splitlines() if (out / "versions.txt").exists() else None}
    smi = work / f"{name}.smi"
    if smi.exists():
        rows = [r.split(",") for r in smi.read_text().splitlines() if r.count(",") == 1]
        rows = [(float(a), float(b)) for a, b in rows if a.strip().replace(".", "").isdigit()]
        if rows:
            figures["gpu_memory_used_max_mib"] = max(r[0] for r in rows)
            figures["gpu_utilisation_mean_pct"] = round(sum(r[1] for r in rows) / len(rows), 1)
    summary["steps"][name] = {"ok": not problems, **entry, "problems": problems, **figures}
summary["total_seconds"] = round(sum(s["seconds"] for s in summary["steps"].values()), 1)
summary["ok"] = all(s["ok"] for s in summary["steps"].values())
(out / "device_check.json").write_text(json.dumps(summary, indent=1) + "\n")
for name, s in summary["steps"].items():
    keys = ("off_device", "steps", "step_s", "after_forget_em", "after_retain_em", "memory_mb_per_process")
    keys += ("gpu_memory_used_max_mib", "gpu_utilisation_mean_pct")
    shown = {k: s[k] for k in keys if s.get(k) is not None}
    if name == "utilisation" and s.get("step"):
        shown = {r["method"]: (r["step_s"], r["mfu"]) for r in s["step"]} | {"attribution": s.get("attribution")}
    print(f"device_check {name}: {'ok' if s['ok'] else 'FAILED'} {s['seconds']} s {'; '.join(s['problems'])} {shown}")
print(f"device_check: {'ok' if summary['ok'] else 'FAILED'} in {summary['total_seconds']} s; {out}/device_check.json")
PY
