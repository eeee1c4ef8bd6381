"""Issue 44: does a run end bit for bit where the run before the redesign ended? results.json (less times),
curve.jsonl (less times), the unlearned weights (every tensor, bit for bit)."""
import json, sys
from pathlib import Path
from safetensors.torch import load_file
import torch

TIMED = ("timings_s", "seconds", "step_seconds", "memory_mb_per_process", "time", "wall")

def walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if any(t in k for t in TIMED):
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'before' if k in a else 'after'}")
            else:
                walk(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, str) and isinstance(b, str) and "/cache/" in a and a.split("/cache/")[1] == b.split("/cache/")[1]:
        pass  # the same cache entry (the same key) under each run's own cache folder
    elif a != b and not (a != a and b != b):
        out.append(f"{path}: {str(a)[:80]} != {str(b)[:80]}")

def compare(before: Path, after: Path) -> list[str]:
    out = []
    walk(json.loads((before / "results.json").read_text()), json.loads((after / "results.json").read_text()), "results", out)
    curves = [[json.loads(l) for l in (d / "curve.jsonl").read_text().splitlines()] for d in (before, after)]
    walk(curves[0], curves[1], "curve", out)
    wb, wa = (load_file(str(next((d / "unlearned_model").glob("*.safetensors")))) for d in (before, after))
    if set(wb) != set(wa):
        out.append("weights: different tensors")
    out += [f"weights.{k} differ" for k in wb if k in wa and not torch.equal(wb[k], wa[k])]
    return out

if __name__ == "__main__":
    b, a = Path(sys.argv[1]), Path(sys.argv[2])
    for name in sys.argv[3:]:
        diffs = compare(b / name, a / name)
        print(f"{name}: {'bit for bit' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:15]:
            print("   ", d)
