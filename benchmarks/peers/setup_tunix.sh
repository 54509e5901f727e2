#!/usr/bin/env bash
# The google-tunix side of the side-by-side GRPO step benchmark (issue 8): a virtual environment of its own
# with an exact pin of Tunix, CPU JAX and everything they pulled in when this was verified (the list below,
# so a later resolver cannot drift). The project's own install never depends on it.
#
#   bash benchmarks/peers/setup_tunix.sh      # prints the venv's python on its last line
#   "$(bash benchmarks/peers/setup_tunix.sh | tail -n 1)" benchmarks/peers/tunix_step.py --checkpoint DIR ...
#
# Idempotent: an existing venv that already imports the pinned Tunix is reused. No PyTorch: Tunix's Qwen2
# path, its safetensors loader and the Hugging Face tokenizer need none. Python >= 3.11 (Tunix's floor);
# PYTHON overrides the interpreter the venv is made from.
set -euo pipefail

PEERS_DIR="${GRPO_JAX_PEERS_DIR:-/tmp/grpo-jax-peers}"
VENV="$PEERS_DIR/tunix-venv"
PY="$VENV/bin/python"
TUNIX_VERSION=0.1.7
JAX_VERSION=0.10.2

works() {
  [ -x "$PY" ] && "$PY" - <<PYEOF >/dev/null 2>&1
import importlib.metadata as m
assert m.version("google-tunix") == "$TUNIX_VERSION", m.version("google-tunix")
assert m.version("jax") == "$JAX_VERSION" and m.version("jaxlib") == "$JAX_VERSION"
import os
os.environ["JAX_PLATFORMS"] = "cpu"
import tunix.models.qwen2.params, tunix.rl.grpo.grpo_learner, tunix.rl.rl_cluster  # noqa: F401
import transformers  # noqa: F401
PYEOF
}

if works; then
  echo "setup_tunix: reusing $VENV" >&2
else
  echo "setup_tunix: creating $VENV (google-tunix==$TUNIX_VERSION, jax[cpu]==$JAX_VERSION)" >&2
  mkdir -p "$PEERS_DIR"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 11), "Tunix needs Python >= 3.11"'
  "${PYTHON:-python3}" -m venv "$VENV"
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  # pip freeze of the verified venv (Python 3.11, linux x86_64), less google-tunix itself
  cat >"$constraints" <<'PINS'
absl-py==2.5.1
aiofiles==25.1.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
array_record==0.8.6
attrs==26.1.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
cloudpickle==3.1.3
clu==0.0.12
datasets==5.2.0
dill==0.4.1
dm-tree==0.1.10
docstring_parser==0.18.0
einops==0.8.2
etils==1.15.0
filelock==4.3.1
flax==0.12.8
fsspec==2026.9.0
google_metrax==0.2.4
googleapis-common-protos==1.76.0
grain==0.2.18
h11==0.16.0
hf-xet==1.8.0
hf_transfer==0.1.9
httpcore==1.0.9
httpx==0.28.1
huggingface_hub==1.33.0
humanize==4.17.0
idna==3.20
immutabledict==4.3.1
importlib_resources==7.1.0
jax==0.10.2
jaxlib==0.10.2
jaxtyping==0.3.11
Jinja2==3.1.6
kagglehub==1.0.3
kagglesdk==0.1.38
llvmlite==0.50.0
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
ml_collections==1.1.0
ml_dtypes==0.6.0
mpmath==1.3.0
msgpack==1.2.4
multiprocess==0.70.19
numba==0.68.1
numpy==2.4.6
omegaconf==2.4.0
opt_einsum==3.4.0
optax==0.2.8
orbax-checkpoint==0.12.8
packaging==26.4
pandas==3.1.1
perfetto==0.59.1
pillow==13.0.0
portpicker==1.6.0
prometheus_client==0.26.0
promise==2.3
protobuf==7.36.2
psutil==7.2.2
pyarrow==26.0.1
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
pylatexenc==2.11
python-dateutil==4.0.0
python-dotenv==1.2.4
PyYAML==6.0.4
qwix==0.1.8
regex==2026.11.19
requests==2.34.2
rich==15.0.0
safetensors==0.7.0
scipy==1.17.1
sentencepiece==0.2.3
shellingham==1.5.4
simple-parsing==0.1.9
simplejson==4.3.0
six==1.17.0
sympy==1.14.0
tenacity==9.2.1
tensorboardX==2.6.5
tensorflow-datasets==4.9.10
tensorflow-metadata==1.21.0
tensorstore==0.1.86
termcolor==3.3.0
tokenizers==0.22.2
toml==0.10.2
tqdm==4.70.1
transformers==5.12.1
treescope==0.1.10
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvloop==0.23.0
wadler_lindig==0.1.8
wrapt==2.5.2
xxhash==4.1.0
zipp==4.1.2
PINS
  "$VENV/bin/pip" install --disable-pip-version-check -q -c "$constraints" \
    "google-tunix==$TUNIX_VERSION" "jax[cpu]==$JAX_VERSION" >&2
  works || { echo "setup_tunix: $VENV does not import Tunix after the install" >&2; exit 1; }
fi
echo "$PY"
