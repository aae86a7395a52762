#!/usr/bin/env bash
# One-command GPU check: build, test, sanitize and benchmark pyimgcls on a CUDA machine without
# internet (and without .git), leaving a handful of files in OUTDIR and a summary table last.
#
#   PYIMGCLS_COMMIT=<sha> bash benchmarks/gpu_check.sh OUTDIR [STAGE]
#
# A lent GPU gives about 15 minutes in all and at most 10 minutes per command, so the work is cut
# into stages that each fit one command (PYIMGCLS_CHECK_BUDGET_S, default 480 s, install included):
#   check     (default, run first) the build for the GPU present, then the wgmma study step alone
#             in its own process under a hard 90 s timeout (a hang there must not eat the budget),
#             then the whole test suite with one Triton config per kernel
#             (PYIMGCLS_TRITON_ONE_CONFIG=1: no autotuning sweeps), then compute-sanitizer memcheck
#             and racecheck over tests/test_cuda_paths.py (one small call per CUDA kernel path)
#   bench1    benchmarks gemm, conv          bench2  pool, batchnorm, softmax_xent
#   bench3    ladder, models
#   bench4    efficientnet_b0: AMP train step vs eager channels_last, and the depthwise conv + SiLU /
#             BN + SiLU kernels' bandwidth (% of 4.8 TB/s) (bench_models.py --depthwise)
# and, when more time is at hand: tests | sanitize | bench (every benchmark) | all (1710 s budget).
# Every invocation first prints versions and installs the package (pip install
# --no-build-isolation --no-deps -e .: an incremental build on a warm machine), then finishes with
# the report.
#
# OUTDIR receives: <date>_<gpu>_<shortsha>.json (results schema of docs/architecture.md with the test and
# sanitizer counts merged in), BENCHMARKS.md (regenerated), logs.tar.gz (every log and the junit XML)
# and summary.txt. The results JSON is also written to benchmarks/results/ when it has benchmark
# cases, so that file can be committed.
#
# Time: each step's timeout is cut to what is left of the stage's budget, so the report is always
# written.
#
# Environment:
#   PYIMGCLS_COMMIT          full sha recorded in the results (else `git rev-parse HEAD`, else unknown)
#   PYTHON                   interpreter (default python3: on the GPU image that is the one with torch)
#   PYIMGCLS_SKIP_INSTALL=1  reuse the installed build (a warm machine that already built this tree)
#   PYIMGCLS_SANITIZE_ARGS   pytest selection for the sanitizer runs (default: tests/test_cuda_paths.py)
#   PYIMGCLS_CHECK_BUDGET_S  see above
#   PYIMGCLS_BENCH_ONLY      comma-separated families for the bench stage (e.g. "gemm,conv"; the
#                            stems of benchmarks/bench_<family>.py); default: the stage's group
#   PYIMGCLS_BENCH_ARGS      extra flags for every benchmark (e.g. --quick)
#   PYIMGCLS_TEST_SELECT     pytest -k expression for the check stage's suite (default "cuda or
#                            triton": the tests of the GPU backends; CI runs the CPU ones)
#   PYIMGCLS_TEST_WORKERS    pytest-xdist processes for the suite (default: CPU count - 2, at most 12,
#                            when pytest-xdist imports; 0: one process). The Triton compiles of a
#                            fresh machine are CPU-bound, so one process leaves most of the cores idle
#
# Exit status: 0 when install, tests, sanitizer and benchmark correctness checks all passed (or were
# skipped for lack of a GPU/tool); 1 otherwise; 2 on bad usage.
set -u
set -o pipefail

STAGES="check|bench1|bench2|bench3|bench4|tests|sanitize|bench|all"
usage() { echo "usage: PYIMGCLS_COMMIT=<sha> bash benchmarks/gpu_check.sh OUTDIR [$STAGES]" >&2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; exit 2; fi
STAGE=${2:-check}
case "$STAGE" in check|bench1|bench2|bench3|bench4|tests|sanitize|bench|all) ;; *) usage; exit 2 ;; esac
# benchmark groups of the bench<n> stages, each sized to fit one command
declare -A BENCH_GROUP=([bench1]="gemm,conv" [bench2]="pool,batchnorm,softmax_xent" [bench3]="ladder,models")
BENCH_GROUP[bench1]+=",sparse"  # the 2:4 sparse GEMM (bench_sparse.py) next to the dense one

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
OUTDIR=$(cd "$1" && pwd)
cd "$ROOT" || exit 2

PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyimgcls-check.XXXXXX")
LOGS=$WORK/logs
RESULTS=$WORK/results
mkdir -p "$LOGS" "$RESULTS"
export PYTHONUNBUFFERED=1
# the GPU machine's copy of the tree has no .git: the caller passes the sha in
PYIMGCLS_COMMIT=${PYIMGCLS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYIMGCLS_COMMIT
if [ "$STAGE" = all ]; then BUDGET=${PYIMGCLS_CHECK_BUDGET_S:-1710}; else BUDGET=${PYIMGCLS_CHECK_BUDGET_S:-480}; fi
RESERVE=30  # seconds kept back for finalize, BENCHMARKS.md, tarball and summary

STEP_LINES=()   # "step | rc | seconds | note" rows for the closing table
NOTES=()        # free-text notes stored in the results JSON
FAILED=0

banner() { printf '\n==== %s (t=%ss)\n' "$*" "$SECONDS"; }

# step_timeout CAP: CAP seconds, or less when the budget has less left (minimum 1)
step_timeout() {
  local left=$(( BUDGET - RESERVE - SECONDS ))
  local t=$1
  if [ "$left" -lt "$t" ]; then t=$left; fi
  if [ "$t" -lt 1 ]; then t=1; fi
  echo "$t"
}

# run_step NAME CAP CMD...: run CMD with its output in $LOGS/NAME.log under a timeout. SIGINT first
# so pytest still writes its junit XML and closing line; SIGKILL 30 s later if it hangs.
# Sets STEP_RC and records the row for the closing table.
run_step() {
  local name=$1 cap=$2; shift 2
  local t; t=$(step_timeout "$cap")
  local start=$SECONDS
  banner "$name (timeout ${t}s)"
  timeout -s INT -k 30 "$t" "$@" >"$LOGS/$name.log" 2>&1
  STEP_RC=$?
  local took=$(( SECONDS - start )) note=""
  if [ "$STEP_RC" -eq 124 ] || [ "$STEP_RC" -eq 137 ]; then
    note="timed out after ${t}s"
    NOTES+=("$name: $note")
  fi
  STEP_LINES+=("$name|$STEP_RC|$took|$note")
  echo "$name: rc=$STEP_RC in ${took}s ${note}"
}

show_tail() { [ -f "$1" ] && tail -n "$2" "$1"; }

# ---------------------------------------------------------------- versions
banner "versions"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $PYIMGCLS_COMMIT"
  echo "stage: $STAGE, budget ${BUDGET}s"
  echo "host: $(uname -srm), $(nproc) cores"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$LOGS/nvidia-smi.log" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --version | grep -i version
  else
    echo "compute-sanitizer: not found"
  fi
  "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    print("torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", gpu)
except Exception as e:  # report, do not stop: the summary must still be written
    print("torch: import failed:", e)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: import failed:", e)
EOF
} 2>&1 | tee "$LOGS/versions.log"

HAVE_GPU=0
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  HAVE_GPU=1
fi

# ---------------------------------------------------------------- install
INSTALL_OK=1
if [ "${PYIMGCLS_SKIP_INSTALL:-0}" = 1 ]; then
  echo "PYIMGCLS_SKIP_INSTALL=1: using the installed build"
  STEP_LINES+=("install|-|0|skipped by PYIMGCLS_SKIP_INSTALL")
else
  # -v keeps the nvcc command lines and ptxas spill warnings in the log
  run_step install 420 "$PY" -m pip install -v --no-build-isolation --no-deps -e .
  if [ "$STEP_RC" -ne 0 ]; then
    INSTALL_OK=0
    FAILED=1
    show_tail "$LOGS/install.log" 40
  fi
fi
"$PY" - >"$LOGS/import.log" 2>&1 <<'EOF'
import pyimgcls  # the one hard requirement; what follows is information
print("pyimgcls", getattr(pyimgcls, "__version__", "?"), "from", pyimgcls.__file__)
try:
    import torch
    backends = pyimgcls.available_backends()
    print("available backends:", backends)
    from pyimgcls._native import C
    print("CUDA kernels compiled:", getattr(C, "cuda_compiled", None), "archs:", getattr(C, "cuda_archs", None))
    if torch.cuda.is_available() and not {"cuda", "triton"} <= set(backends):
        print("MISSING GPU BACKEND: a GPU is visible but not both cuda and triton are available")
except Exception as e:
    print("backend query failed:", type(e).__name__, e)
EOF
IMPORT_RC=$?
cat "$LOGS/import.log"
if [ "$IMPORT_RC" -ne 0 ]; then
  echo "pyimgcls does not import: stages skipped"
  STEP_LINES+=("import|$IMPORT_RC|0|import pyimgcls failed (import.log)")
  INSTALL_OK=0
  FAILED=1
fi
# on a GPU machine a backend that did not build would turn its tests into silent skips
if grep -q "^MISSING GPU BACKEND" "$LOGS/import.log"; then
  NOTES+=("GPU visible but the cuda or triton backend is not available (see import.log)")
  FAILED=1
fi

# ---------------------------------------------------------------- tests
TESTS_RAN=0
# stage_tests [CAP [PYTEST ARGS...]]
stage_tests() {
  TESTS_RAN=1
  local cap=${1:-540}; shift || true
  local workers=${PYIMGCLS_TEST_WORKERS:-}
  if [ -z "$workers" ]; then
    workers=$(( $(nproc) - 2 )); [ "$workers" -gt 12 ] && workers=12
  fi
  local xdist=()
  local omp=${OMP_NUM_THREADS:-}
  if [ "$workers" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
    xdist=(-n "$workers")
    # the CPU references of the workers share the cores
    omp=${OMP_NUM_THREADS:-$(( $(nproc) / workers > 1 ? $(nproc) / workers : 1 ))}
  fi
  OMP_NUM_THREADS=${omp:-$(nproc)} run_step tests "$cap" "$PY" -m pytest tests -q -rfEs -p no:cacheprovider --durations=15 \
    "${xdist[@]+"${xdist[@]}"}" --junitxml="$LOGS/junit-tests.xml" "$@"
  # pytest: 0 all passed, 5 no tests collected; anything else (failures, errors, interrupt) fails
  if [ "$STEP_RC" -ne 0 ] && [ "$STEP_RC" -ne 5 ]; then FAILED=1; fi
  show_tail "$LOGS/tests.log" 25
}

# ---------------------------------------------------------------- sanitize
MEMCHECK_LOG=""
RACECHECK_LOG=""
stage_sanitize() {
  local reason=""
  if ! command -v compute-sanitizer >/dev/null; then
    reason="compute-sanitizer not found"
  elif [ "$HAVE_GPU" -ne 1 ]; then
    reason="no CUDA device visible"
  else
    # a tiny probe first: on gVisor machines the tool refuses the device ("Device not supported")
    run_step sanitizer-probe 120 compute-sanitizer --tool memcheck "$PY" -c \
      "import torch; torch.zeros(1, device='cuda').add_(1); torch.cuda.synchronize()"
    if [ "$STEP_RC" -ne 0 ] || ! grep -q "ERROR SUMMARY: 0 errors" "$LOGS/sanitizer-probe.log"; then
      reason="probe failed: $(grep -m1 -iE 'not supported|error' "$LOGS/sanitizer-probe.log" | head -c 200)"
    fi
  fi
  if [ -n "$reason" ]; then
    echo "sanitizer cannot attach here: skipped ($reason)"
    NOTES+=("sanitizer skipped: $reason")
    STEP_LINES+=("sanitize|-|0|skipped: $reason")
    return
  fi
  local args=${PYIMGCLS_SANITIZE_ARGS:-tests/test_cuda_paths.py}
  local left=$(( BUDGET - RESERVE - SECONDS ))
  # memcheck gets a little over half of what is left; racecheck the rest
  local memcap=$(( left * 11 / 20 ))
  # no caching allocator under memcheck: each tensor is its own cudaMalloc, so an access past a
  # tensor's end lands outside any allocation and is reported
  # shellcheck disable=SC2086  # $args is a list of pytest arguments
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step memcheck "$memcap" \
    compute-sanitizer --tool memcheck --target-processes application-only --print-limit 200 \
    "$PY" -m pytest $args -q -p no:cacheprovider
  MEMCHECK_LOG=$LOGS/memcheck.log
  show_tail "$MEMCHECK_LOG" 6
  # shellcheck disable=SC2086
  run_step racecheck 600 \
    compute-sanitizer --tool racecheck --target-processes application-only --print-limit 200 \
    "$PY" -m pytest $args -q -p no:cacheprovider
  RACECHECK_LOG=$LOGS/racecheck.log
  show_tail "$RACECHECK_LOG" 6
  local log
  for log in "$MEMCHECK_LOG" "$RACECHECK_LOG"; do
    if ! grep -qE "(ERROR|RACECHECK) SUMMARY" "$log"; then
      local n
      n=$(grep -cE '^========= +(Invalid|Error|Race|Uninitialized|Barrier|Program hit)' "$log")
      NOTES+=("$(basename "$log" .log): no summary line (cut off?); $n error reports before the end of the log")
    fi
  done
}

# ---------------------------------------------------------------- bench
# stage_bench [FAMILIES]: the benchmarks of FAMILIES ("a,b"; default every one, or PYIMGCLS_BENCH_ONLY)
stage_bench() {
  local f name only=${PYIMGCLS_BENCH_ONLY:-${1:-}}
  for f in benchmarks/bench_*.py; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .py)
    if [ -n "$only" ] && [[ ",$only," != *",${name#bench_},"* ]]; then
      continue
    fi
    # shellcheck disable=SC2086  # PYIMGCLS_BENCH_ARGS is a list of flags
    run_step "$name" 540 "$PY" "$f" --out "$RESULTS" ${PYIMGCLS_BENCH_ARGS:-}
    if [ "$STEP_RC" -ne 0 ]; then FAILED=1; fi
    show_tail "$LOGS/$name.log" 70
  done
}

if [ "$INSTALL_OK" -eq 1 ]; then
  case "$STAGE" in
    check)
      # the wgmma step alone first: hard timeout, own process
      run_step wgmma 90 "$PY" -m pytest tests/test_ladder_cuda.py -k wgmma -q -p no:cacheprovider
      if [ "$STEP_RC" -ne 0 ] && [ "$STEP_RC" -ne 5 ]; then FAILED=1; fi
      show_tail "$LOGS/wgmma.log" 8
      # the suite with one Triton config per kernel; what is left after it goes to the sanitizer
      PYIMGCLS_TRITON_ONE_CONFIG=1 stage_tests $(( (BUDGET - RESERVE - SECONDS) * 3 / 4 )) \
        -k "(${PYIMGCLS_TEST_SELECT:-cuda or triton}) and not wgmma"
      stage_sanitize ;;
    bench1|bench2|bench3) stage_bench "${BENCH_GROUP[$STAGE]}" ;;
    bench4)
      # shellcheck disable=SC2086  # PYIMGCLS_BENCH_ARGS is a list of flags
      run_step bench_models_effnet 540 "$PY" benchmarks/bench_models.py --out "$RESULTS" --models efficientnet_b0 \
        --no-compile --depthwise ${PYIMGCLS_BENCH_ARGS:-}
      if [ "$STEP_RC" -ne 0 ]; then FAILED=1; fi
      show_tail "$LOGS/bench_models_effnet.log" 70 ;;
    tests) stage_tests ;;
    sanitize) stage_sanitize ;;
    bench) stage_bench ;;
    all) stage_tests; stage_sanitize; stage_bench ;;
  esac
else
  NOTES+=("install or import failed: stage $STAGE not run")
fi

# ---------------------------------------------------------------- report
banner "report"
FIN_ARGS=(finalize --results-dir "$RESULTS" --write "$OUTDIR" --publish "$ROOT/benchmarks/results")
if [ "$TESTS_RAN" -eq 1 ]; then
  FIN_ARGS+=(--junit "$LOGS/junit-tests.xml" --pytest-log "$LOGS/tests.log")
fi
[ -n "$MEMCHECK_LOG" ] && FIN_ARGS+=(--memcheck-log "$MEMCHECK_LOG")
[ -n "$RACECHECK_LOG" ] && FIN_ARGS+=(--racecheck-log "$RACECHECK_LOG")
for n in "${NOTES[@]+"${NOTES[@]}"}"; do FIN_ARGS+=(--note "$n"); done
# -P: do not put the script's folder on sys.path (its modules could shadow the standard library);
# report.py loads pyimgcls/bench.py from its file, so the report works even when the package failed
# to build
"$PY" -P benchmarks/report.py "${FIN_ARGS[@]}" 2>&1 | tee "$LOGS/finalize.log"
RESULT_JSON=$(awk -v d="results: $OUTDIR/" 'index($0, d) == 1 { print substr($0, 10); exit }' "$LOGS/finalize.log")
"$PY" benchmarks/make_benchmarks_md.py --output "$OUTDIR/BENCHMARKS.md" >>"$LOGS/finalize.log" 2>&1 \
  || echo "BENCHMARKS.md generation failed (see finalize.log)"

SUMMARY=$OUTDIR/summary.txt
{
  echo "pyimgcls GPU check: stage $STAGE, ${SECONDS}s"
  printf '%-18s %5s %6s  %s\n' step rc seconds note
  for line in "${STEP_LINES[@]+"${STEP_LINES[@]}"}"; do
    IFS='|' read -r s rc took note <<<"$line"
    printf '%-18s %5s %6s  %s\n' "$s" "$rc" "$took" "$note"
  done
  echo
  if [ -n "$RESULT_JSON" ] && [ -f "$RESULT_JSON" ]; then
    "$PY" -P benchmarks/report.py summary "$RESULT_JSON" 2>&1 || echo "summary table failed"
  else
    echo "no results JSON was written (see logs.tar.gz: finalize.log)"
    FAILED=1
  fi
  echo
  if [ "$FAILED" -ne 0 ]; then echo "GPU CHECK: FAILED"; else echo "GPU CHECK: OK"; fi
} >"$SUMMARY" 2>&1

# the sanitizer counts are known only now; errors found fail the check
if [ -n "$RESULT_JSON" ] && [ -f "$RESULT_JSON" ]; then
  if ! "$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['sanitizer']; \
sys.exit(1 if any(v for v in s.values()) else 0)" "$RESULT_JSON"; then
    FAILED=1
    sed -i 's/^GPU CHECK: OK$/GPU CHECK: FAILED (sanitizer errors)/' "$SUMMARY"
  fi
fi

tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs
rm -rf "$WORK"
echo "files in $OUTDIR:"
find "$OUTDIR" -maxdepth 1 -type f -printf '  %f (%s bytes)\n' | sort
echo
cat "$SUMMARY"
exit "$FAILED"
