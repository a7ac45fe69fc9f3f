#!/usr/bin/env bash
# Every GPU row the benchmarks make, and the CUDA tests, in one run of under 9 minutes on one GPU:
#   1. HVP cost over gradient cost, eager and torch.compile          (benchmarks/hvp_cost.py)
#   2. optimizer step cost, measured vs counted                       (benchmarks/optimizer_step_cost.py)
#   3. time-to-target on fmnist_mlp and fmnist_2c2d, Adam vs K-FAC, Shampoo, SOAP and Hessian-free at their
#      defaults, 8 s per run                                          (benchmarks/time_to_target.py)
#   4. GPU busy % with 1, 2 and 4 trials per device                   (benchmarks/trials_per_device.py)
#   5. the CUDA tests                                                 (python -m pytest -m cuda)
# Each piece runs under its own time limit; one that fails or runs out of time is reported and the others go on.
#
# Usage: benchmarks/gpu.sh [--dry-run]
#   --dry-run (or HPO2_DEVICE=cpu): every piece at tiny sizes on the CPU, a check that the script works
#   (tests/reliability/test_gpu_script.py runs it).
# Output, in $OUT if set (the lent machine's return folder), else benchmarks/results/gpu-<UTC time>:
#   rows.md (each piece's status and markdown rows), gpu.json (raw numbers), gpu.log, cuda-tests.log.
#
# On a machine without hpo2's dependencies or Fashion-MNIST (the lent GPU machines have neither optuna, MLflow
# nor pydantic, and no internet), run benchmarks/gpu_carry.sh first where pip works: it fills .gpu-carry/ with
# the missing wheels and the data, which this script installs into /tmp/hpo2-site and points the tasks at.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" || "${HPO2_DEVICE:-}" == "cpu" ]]; then DRY=1; fi
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RAW=$(mktemp -d -t hpo2-gpu-XXXXXX)
trap 'rm -rf "$RAW"' EXIT
LOG=$OUT_DIR/gpu.log
STATUS=$RAW/status.md
: >"$LOG"
export HPO2_BENCH_OUT=$RAW PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$LOG"; }

# 0. what the machine lacks
if ! $PY -c "import optuna, mlflow, pydantic, sqlalchemy" 2>/dev/null; then
  if ls .gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    say "installing the carried wheels (.gpu-carry/wheels) into /tmp/hpo2-site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hpo2-site \
      .gpu-carry/wheels/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=$PYTHONPATH:/tmp/hpo2-site
  fi
  $PY -c "import optuna, mlflow, pydantic, sqlalchemy" 2>>"$LOG" || say "MISSING: optuna/mlflow/pydantic/sqlalchemy" \
    "are not installed and no wheels were carried: run benchmarks/gpu_carry.sh where pip works, carry .gpu-carry"
fi
FMNIST=${HPO2_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [[ ! -e $FMNIST/train-images-idx3-ubyte.gz && ! -e $FMNIST/train-images-idx3-ubyte ]]; then
  if [[ -d .gpu-carry/fashion-mnist ]]; then
    export HPO2_FASHION_MNIST_DIR=$PWD/.gpu-carry/fashion-mnist
    say "Fashion-MNIST: not in $FMNIST; using the carried copy in .gpu-carry/fashion-mnist"
  else
    say "MISSING: Fashion-MNIST is not in $FMNIST and was not carried (benchmarks/gpu_carry.sh copies it):" \
      "the time-to-target and trials-per-device pieces will fail"
  fi
fi

FAILED=0
# piece NAME SECONDS COMMAND...: run COMMAND under a time limit, its output to the log, its status to rows.md
piece() {
  local name=$1 limit=$2 start code
  shift 2
  say "== $name (limit ${limit}s): $*"
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  code=$?
  local took=$(($(date +%s) - start)) what="ok"
  if ((code == 124 || code == 137)); then what="ran out of its ${limit} s"; elif ((code != 0)); then what="failed (exit $code)"; fi
  ((code == 0)) || FAILED=1
  echo "| $name | $what | $took |" >>"$STATUS"
  say "   $what in ${took}s"
}

if ((DRY)); then
  DEVICE=cpu
  DRY_LIMIT=${HPO2_DRY_RUN_LIMIT:-300}  # a safety net: about 20 s each on a quiet 2-core CPU, minutes on a loaded one
  piece "HVP cost" $DRY_LIMIT $PY benchmarks/hvp_cost.py --device cpu --repeats 1 --tiny --compile-backend eager
  piece "optimizer step cost" $DRY_LIMIT $PY benchmarks/optimizer_step_cost.py --device cpu --repeats 1
  piece "time-to-target" $DRY_LIMIT $PY benchmarks/time_to_target.py --tasks fmnist_mlp fmnist_2c2d --optimizers adam kfac \
    --variants defaults --repeats 1 --seconds 0.3 --n-train 128 --device cpu
  piece "trials per device" $DRY_LIMIT $PY benchmarks/trials_per_device.py --device cpu --per-device 1 --task logreg_breast_cancer \
    --trial-seconds 0.3 --warmup 60 --window 2
  piece "CUDA tests (collected only: no GPU)" $DRY_LIMIT bash -c \
    "set -o pipefail; $PY -m pytest -m cuda --collect-only -q -p no:cacheprovider 2>&1 | tee '$OUT_DIR/cuda-tests.log'"
else
  DEVICE=cuda
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: use --dry-run'" 2>>"$LOG" || {
    say "no CUDA device here: run with --dry-run for the CPU check"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
  piece "HVP cost" 130 $PY benchmarks/hvp_cost.py --device cuda --repeats 20
  piece "optimizer step cost" 60 $PY benchmarks/optimizer_step_cost.py --device cuda --repeats 40
  piece "time-to-target" 120 $PY benchmarks/time_to_target.py --tasks fmnist_mlp fmnist_2c2d \
    --optimizers adam kfac shampoo soap hessian_free --variants defaults --repeats 1 --seconds 8 --device cuda
  piece "trials per device" 130 $PY benchmarks/trials_per_device.py --device cuda --per-device 1 2 4 \
    --trial-seconds 5 --warmup 25 --window 15
  # test modules that import, at the top, a package gpu_carry.sh does not carry (they hold no CUDA test)
  SKIP=""
  $PY -c "import plotly" 2>/dev/null || SKIP="$SKIP --ignore=tests/test_report.py"
  $PY -c "import optuna_integration" 2>/dev/null || SKIP="$SKIP --ignore=tests/test_sampler_names.py"
  piece "CUDA tests" 80 bash -c \
    "set -o pipefail; $PY -m pytest -m cuda -q -p no:cacheprovider $SKIP 2>&1 | tee '$OUT_DIR/cuda-tests.log'"
fi

{
  echo "# GPU rows ($DEVICE$( ((DRY)) && echo ', dry run: tiny sizes, not measurements'))"
  echo
  echo "- command: \`benchmarks/gpu.sh${1:+ $1}\`; date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $($PY -c 'import sys; sys.path.insert(0, "benchmarks"); import torch; from common import machine; print(machine(torch.device(sys.argv[1])))' "$DEVICE" 2>/dev/null)"
  echo
  echo "| piece | status | seconds |"
  echo "| --- | --- | ---: |"
  cat "$STATUS"
  [[ -f $RAW/rows.md ]] && cat "$RAW/rows.md"
} >"$OUT_DIR/rows.md"
$PY - "$RAW" "$OUT_DIR/gpu.json" <<'EOF'
import json, pathlib, sys
raw = pathlib.Path(sys.argv[1])
merged = {p.stem: json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(merged, indent=1))
EOF
say "wrote $OUT_DIR/rows.md and $OUT_DIR/gpu.json"
cat "$OUT_DIR/rows.md"
exit $FAILED
