#!/usr/bin/env bash
# Fill .gpu-carry/ with what a lent GPU machine lacks for benchmarks/gpu.sh: it has PyTorch (CUDA), numpy, scipy,
# scikit-learn, typer, rich, pyyaml and pytest, but not optuna, MLflow, pydantic or SQLAlchemy, no Fashion-MNIST,
# and no internet. Run this where pip reaches PyPI and Fashion-MNIST is installed; then carry the folder:
#   benchmarks/gpu_carry.sh
#   run tool: command "bash benchmarks/gpu.sh", carry [".gpu-carry"]   (.gpu-carry is git-ignored: it travels only
#   when named in carry; it must stay under the tool's 64 MiB together with the working tree)
# Wheels are for CPython 3.12 on x86-64 Linux (the machines' python3), at the versions this venv runs, with their
# dependencies; those the machine already has (KINDS.md's package list) are removed again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=.gpu-carry
rm -rf "$DEST/wheels"
mkdir -p "$DEST/wheels"

version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
WANTED=()
for name in optuna mlflow-skinny mlflow-tracing sqlalchemy alembic pydantic cmaes; do
  WANTED+=("$name==$(version "$name")")
done
TARGET=(--dest "$DEST/wheels" --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64 --platform any)
$PY -m pip download --quiet "${TARGET[@]}" "${WANTED[@]}"
# the Shampoo/SOAP tests' reference; --no-deps: it asks for torch, which the machine has in its CUDA build
$PY -m pip download --quiet --no-deps "${TARGET[@]}" "pytorch-optimizer==$(version pytorch-optimizer)"

# already on the machine (KINDS.md, "Python packages already there"): keep its builds, PyTorch's above all
ON_MACHINE="torch numpy scipy scikit_learn typer rich PyYAML pyyaml click cloudpickle protobuf requests anyio packaging
typing_extensions urllib3 idna certifi charset_normalizer pytest pluggy iniconfig sympy mpmath networkx jinja2
MarkupSafe markupsafe filelock fsspec tqdm pandas python_dateutil six tzdata pytz joblib threadpoolctl pyarrow
matplotlib pillow zipp h11 httpcore httpx sniffio triton nvidia psutil uvloop pygments markdown_it_py mdurl
shellingham importlib_metadata setuptools wheel attrs hypothesis sortedcontainers"
for wheel in "$DEST"/wheels/*.whl; do
  dist=$(basename "$wheel" | cut -d- -f1)
  for have in $ON_MACHINE; do
    if [[ ${dist,,} == "${have,,}" || ${dist,,} == nvidia_* ]]; then rm -f "$wheel"; break; fi
  done
done

FMNIST=${HPO2_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$DEST/fashion-mnist"
cp "$FMNIST"/*-ubyte.gz "$DEST/fashion-mnist/"
grep -qx '.gpu-carry/' .gitignore || echo '.gpu-carry/' >>.gitignore
du -sh "$DEST/wheels" "$DEST/fashion-mnist"
echo "carry [\".gpu-carry\"] with: bash benchmarks/gpu.sh   (total with the working tree must stay under 64 MiB)"
