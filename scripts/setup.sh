#!/usr/bin/env bash
# Create .venv (if missing) and install the toolkit's requirements into it.
#   bash scripts/setup.sh            # CPU machines: torch==2.13.0 (the local CPU build)
#   TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash scripts/setup.sh
#   WITH_TRITON=1 bash scripts/setup.sh   # + triton if missing (~270 MB; runs the Triton kernels' tests on a CPU)
# An existing torch in the venv is kept, so a GPU build installed by hand stays.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX"
  else
    "${PIP[@]}" install -q "$TORCH_SPEC"
  fi
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
echo "[setup] installing requirements.txt (torch kept at $TORCH_VERSION)"
"${PIP[@]}" install -q -r requirements.txt -c "$CONSTRAINTS"
if [ "${WITH_TRITON:-0}" = "1" ] && ! "$VENV/bin/python" -c "import triton" 2>/dev/null; then
  # CUDA builds of torch bring their own triton; this is for CPU machines (the interpreter tests)
  echo "[setup] installing triton==${TRITON_VERSION:-3.9.0} (a ~270 MB wheel)"
  "${PIP[@]}" install -q "triton==${TRITON_VERSION:-3.9.0}" -c "$CONSTRAINTS"
fi
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, pytorch_lightning as pl; print("torch", torch.__version__, "| lightning", pl.__version__, "| cuda", torch.cuda.is_available())')"
