#!/usr/bin/env bash
# The Hugging Face TRL environment for the side-by-side GRPO benchmark (benchmarks/peers/trl_step.py).
#
# A virtual environment of its own, at ${GRPO_JAX_PEERS_DIR:-/tmp/grpo-jax-peers}/trl-venv: grpo_jax's
# own install never depends on PyTorch or TRL. Idempotent: a venv that already imports the pinned
# versions is reused as it is. Prints the venv's python path as its last line.
#
# torch is installed FIRST and pinned to 2.13.0: on the project's machines that exact pin takes a CPU
# build from local disk, and once it is there the other packages' torch requirements are met without
# pulling a multi-GB CUDA build.
set -euo pipefail

PEERS_DIR="${GRPO_JAX_PEERS_DIR:-/tmp/grpo-jax-peers}"
VENV="$PEERS_DIR/trl-venv"
PYTHON_BIN="${PYTHON:-python3}"

TORCH_VERSION=2.13.0
TRL_VERSION=1.16.0
TRANSFORMERS_VERSION=5.24.0
ACCELERATE_VERSION=1.15.0
DATASETS_VERSION=5.2.0

check() {
  "$VENV/bin/python" - "$TORCH_VERSION" "$TRL_VERSION" "$TRANSFORMERS_VERSION" "$ACCELERATE_VERSION" \
    "$DATASETS_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import accelerate, datasets, torch, transformers, trl
want = sys.argv[1:]
have = [torch.__version__.split("+")[0], trl.__version__, transformers.__version__,
        accelerate.__version__, datasets.__version__]
sys.exit(0 if have == want else 1)
EOF
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "reusing $VENV" >&2
else
  mkdir -p "$PEERS_DIR"
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || true
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" >&2
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" "trl==$TRL_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" "accelerate==$ACCELERATE_VERSION" \
    "datasets==$DATASETS_VERSION" >&2
  check || { echo "setup_trl.sh: the venv at $VENV does not import the pinned versions" >&2; exit 1; }
fi
echo "$VENV/bin/python"
