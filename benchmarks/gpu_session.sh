#!/usr/bin/env bash
# The GPU checks still open, as one prepared script for a lent GPU (docs/benchmarks.md, "On a GPU").
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh        # about 11 minutes on one H200 (the parts' limits: 12 min 40 s)
#
# Each part has its own time limit, so one that hangs or runs long cannot eat the others' time; what a part
# printed and the JSON it wrote land in $OUT (decode_*.json, update_*.json, gpu_session.log). One decode
# variant costs about 100 s of wall time on an H200 (two sampler compiles of ~20 s, model set-up, the timed
# calls; measured 2026-12-04), an update about 110 s, so each part runs one. Parts, in order of what they
# tell us:
#   1. the 0.5B bf16 decode with XLA's command buffers (CUDA graphs) also capturing the while-loops: if
#      faster than the 3.53 ms per step measured without, the decode step is bound by kernel launches (24
#      layers x ~15 kernels per token). Checking for the end every 16 steps did not help (2026-12-04).
#   2. the update of the 0.5B shape with 2 micro-batches of 64 rows (8 of 16 reached 39% MFU): at hidden
#      896 a 16-row micro-batch's matmuls may be too small to fill the GPU.
#   3. decode, Qwen2.5-1.5B shape (the row still missing).
#   4. LoRA (bench_lora.py): the 0.5B update, full fine-tuning against rank 16, and the sampler decoding
#      the LoRA policy with the adapters unmerged (the default) against merged once per call, in bf16.
#   5. a jax.profiler trace of one 0.5B bf16 decode call ($OUT/decode_0p5b_trace.json.gz, Perfetto), to
#      see where a step's time goes. It is last: under a 600 s limit for the whole script it is the part
#      cut first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to a directory for the results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$OUT/gpu_session.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$log"

part() {  # part SECONDS NAME SCRIPT [ENV=VALUE ...] -- ARGS...: one benchmarks/SCRIPT run under a time limit
    local limit="$1" name="$2" script="$3"
    shift 3
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    echo "== $name ($(date -u +%T), limit ${limit}s) ${envs[*]}" | tee -a "$log"
    env "${envs[@]}" timeout "$limit" python3 "benchmarks/$script" "$@" --json "$OUT/$name.json" \
        2>&1 | tee -a "$log"
    echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}

part 150 decode_0p5b_cuda_graph_loops bench_gpu_roofline.py XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" -- \
    --sizes 0.5b --parts decode --decode-variants bf16:1 --repeats 3
part 150 update_0p5b_2mb bench_gpu_roofline.py -- --sizes 0.5b --parts update --repeats 3 --update-micro-batches 2
part 130 decode_1p5b bench_gpu_roofline.py -- --sizes 1.5b --parts decode --decode-variants bf16:1 --repeats 3
part 200 lora_0p5b bench_lora.py -- --size 0.5b --dtype bfloat16 --rows 64 --prompt 128 --completion 256 \
    --micro 4 --decode-prompts 32 --group 8 --new-tokens 256 --repeats 3
# last, as it is diagnosis rather than a figure: where a decode step's time goes (copied flat into $OUT, as
# only files at most two folders down come back)
part 130 decode_0p5b_profile bench_gpu_roofline.py -- --sizes 0.5b --parts decode --decode-variants bf16:1 --repeats 1 \
    --profile "$OUT/trace_tmp"
trace=$(find "$OUT/trace_tmp" -name perfetto_trace.json.gz 2>/dev/null | head -n 1)
if [ -n "$trace" ]; then cp "$trace" "$OUT/decode_0p5b_trace.json.gz"; fi
rm -rf "$OUT/trace_tmp"
echo "== done $(date -u +%T)" | tee -a "$log"
