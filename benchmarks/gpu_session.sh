#!/usr/bin/env bash
# The GPU checks issue 8 still needs, as one prepared script for a lent GPU (docs/benchmarks.md, "On a GPU").
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh        # about 9 minutes on one H200 (the parts' limits: 9 min 50 s)
#
# Each part has its own time limit, so one that hangs or runs long cannot eat the others' time; what a part
# printed and the JSON it wrote land in $OUT (decode_*.json, update_*.json, gpu_session.log). Parts, in order
# of what they tell us:
#   1. decode, Qwen2.5-0.5B shape, batch 256, against the HBM roofline (issue 8 target: >= 50%): bf16
#      weights checking for the end after every step (as measured on 2026-11-28: 18%) and every 16 steps
#      (SamplingConfig.decode_steps_per_check, the GPU default since 2026-11-29: XLA's GPU runtime waits on
#      the host for a while-loop's condition after every iteration, so the GPU idles while the host launches
#      the next step's kernels; a fixed-count inner loop has no wait), and fp32 masters cast once per call
#      (the trainer's path).
#   2. the same bf16 decodes with XLA's command buffers (CUDA graphs) also capturing the while-loops: if
#      faster, the steps are bound by kernel launches (24 layers x ~15 kernels per token).
#   3. decode, Qwen2.5-1.5B shape (the row still missing), at the GPU default.
#   4. the update of the 0.5B shape (MFU; issue 8 target >= 40%; 31% measured on 2026-11-28) with its 8
#      micro-batches of 16 rows, and with 2 of 64 rows: at hidden 896 a 16-row micro-batch's matmuls may be
#      too small to fill the GPU, and an H200 holds the larger one's activations.
#   5. a jax.profiler trace of one 0.5B bf16 decode call ($OUT/decode_0p5b_trace.json.gz, Perfetto), to
#      see where a step's time goes. Run the whole script under a 600 s limit: if the parts run long, this
#      is the one cut.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to a directory for the results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$OUT/gpu_session.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$log"

part() {  # part SECONDS NAME [ENV=VALUE ...] -- ARGS...: one bench_gpu_roofline.py run under a time limit
    local limit="$1" name="$2"
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    echo "== $name ($(date -u +%T), limit ${limit}s) ${envs[*]}" | tee -a "$log"
    env "${envs[@]}" timeout "$limit" python3 benchmarks/bench_gpu_roofline.py "$@" --json "$OUT/$name.json" \
        2>&1 | tee -a "$log"
    echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}

part 150 decode_0p5b -- --sizes 0.5b --parts decode --decode-variants bf16:1,bf16:16,fp32-once:16 --repeats 3
part 90 decode_0p5b_cuda_graph_loops XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" -- \
    --sizes 0.5b --parts decode --decode-variants bf16:1,bf16:16 --repeats 3
part 130 decode_1p5b -- --sizes 1.5b --parts decode --repeats 3
part 160 update_0p5b -- --sizes 0.5b --parts update --repeats 3 --update-micro-batches 8,2
# last, as it is diagnosis rather than a figure: where a decode step's time goes (copied flat into $OUT, as
# only files at most two folders down come back)
part 60 decode_0p5b_profile -- --sizes 0.5b --parts decode --decode-variants bf16:16 --repeats 1 \
    --profile "$OUT/trace_tmp"
trace=$(find "$OUT/trace_tmp" -name perfetto_trace.json.gz 2>/dev/null | head -n 1)
if [ -n "$trace" ]; then cp "$trace" "$OUT/decode_0p5b_trace.json.gz"; fi
rm -rf "$OUT/trace_tmp"
echo "== done $(date -u +%T)" | tee -a "$log"
