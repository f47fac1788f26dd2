#!/usr/bin/env bash
# The main job on one CUDA GPU, timed (issue 15, "On a GPU"): examples/quickstart.yaml with model.device=cuda,
# first as `bash scripts/main.sh` runs it (it stops at the first failed gate), then resumed with --keep-going so
# that stages 5-7 are timed too. Prints each part's wall clock and every stage's seconds from the manifest.
#
#   bash benchmarks/gpu_main_job.sh                 # in a checkout whose .venv has personatune (scripts/venv.sh)
#   PYTHON=python3 bash benchmarks/gpu_main_job.sh  # any Python that imports personatune (PYTHONPATH=src, say)
#
# Extra arguments go to both `personatune run` calls (e.g. `data.teacher.batch_size=128`).
# Env: RUN_LIMIT (seconds, default 3000) caps the two runs together; GPU memory and utilisation are sampled once a second
# into $OUT/gpu_smi.csv (or runs/gpu_smi.csv) while they run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
LIMIT="${RUN_LIMIT:-3000}"
DEST="${OUT:-$ROOT/runs}"
mkdir -p "$DEST"
command -v nvidia-smi >/dev/null || { echo "gpu_main_job: error: nvidia-smi not found; fix: run on a machine with a CUDA GPU" >&2; exit 2; }
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "gpu_main_job: error: $PY's torch sees no CUDA device; fix: install a CUDA build of torch" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 1 >"$DEST/gpu_smi.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
start=$(date +%s.%N)
SECONDS=0
timeout "$LIMIT" "$PY" -m personatune run examples/quickstart.yaml model.device=cuda "$@"
rc1=$?
mid=$(date +%s.%N)
left=$((LIMIT - SECONDS > 1 ? LIMIT - SECONDS : 1))
timeout "$left" "$PY" -m personatune run examples/quickstart.yaml model.device=cuda --keep-going "$@"
rc2=$?
end=$(date +%s.%N)
"$PY" - "$start" "$mid" "$end" "$rc1" "$rc2" runs/quickstart/manifest.json "$DEST/gpu_smi.csv" <<'EOF'
import csv, json, sys
start, mid, end = (float(x) for x in sys.argv[1:4])
print(f"main job as scripts/main.sh runs it: {mid - start:.1f} s (exit {sys.argv[4]})")
print(f"resumed with --keep-going (the stages not done yet): {end - mid:.1f} s (exit {sys.argv[5]})")
print(f"both: {end - start:.1f} s")
try:
    stages = json.load(open(sys.argv[6]))["stages"]
except (OSError, ValueError, KeyError):
    sys.exit(f"gpu_main_job: no stage times: {sys.argv[6]} is missing or unreadable (the run did not start; see above)")
print("| stage | status | seconds |\n|---|---|---|")
for name, s in stages.items():
    print(f"| {name} | {s.get('status')} | {s.get('seconds')} |")
try:
    rows = [r for r in csv.reader(open(sys.argv[7])) if len(r) > 1 and r[1].strip()[:1].isdigit()]
    print(f"GPU memory used, peak of 1 s samples: {max(int(r[1].split()[0]) for r in rows)} MiB")
    busy = [int(r[2].split()[0]) for r in rows if len(r) > 2]
    print(f"GPU utilisation, mean of {len(busy)} 1 s samples: {sum(busy) / len(busy):.1f} %")
except (OSError, ValueError):
    print("GPU memory: no samples")
EOF
