#!/usr/bin/env bash
# On a lent GPU machine: issue 7's GPU checks as one command that fits one lease.
#
#     bash bench/gpu_kit.sh      # first, here: the wheels that machine lacks, into .whl/
#     # device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
#
# It installs the kit beside the machine's own torch, runs the @pytest.mark.gpu tests of the
# diffusers adapter, then `bench/diffusers_speed.py --lease` with whatever time is left, so the
# targets are measured first and the rest of the table as far as the time allows. Everything
# printed is also written under $OUT (gpu_tests.log, bench.log, bench.json), and the reply ends
# with the bench's summary table and target lines.
#
# TOTAL_S: seconds for the whole script (default 540, under the tool's 600 s command limit);
# KEEP_S: seconds kept back for the bench's last step and the transfer (default 30).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
TOTAL_S="${TOTAL_S:-540}"
KEEP_S="${KEEP_S:-30}"
OUT="${OUT:-/tmp/atelier-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the wheel kit failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    echo "no .whl/ here: run bench/gpu_kit.sh on the development machine and carry .whl" >&2
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# one compile cache for the tests and the bench, kept apart from anything on the machine
export TORCHINDUCTOR_CACHE_DIR=/tmp/atelier-inductor

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'· diffusers', diffusers.__version__, '·', torch.cuda.get_device_name())" || exit 1

# 1. the adapter's GPU tests (tiny random-weight model; one reduce-overhead compile)
timeout 200 "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/tools/test_diffusers_local.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -15

# 2. the benchmark, in the time that is left
budget=$((TOTAL_S - (SECONDS - started) - KEEP_S))
echo "bench budget: ${budget} s"
timeout $((budget + KEEP_S - 5)) "$PY" bench/diffusers_speed.py --lease --budget "$budget" \
    --workdir /tmp/atelier-bench --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
status=$?
# the step lines, then the summary (the reply shows the tail of the output)
grep -E '^  ' "$OUT/bench.log" | tail -40
echo
sed -n '/^model /,$p' "$OUT/bench.log"
[ $status -eq 0 ] || { echo "bench exited with $status; the last lines:"; tail -25 "$OUT/bench.log"; }
echo "done in $((SECONDS - started)) s"
