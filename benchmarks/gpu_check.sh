#!/usr/bin/env bash
# `make gpu-check`: winnow's whole GPU validation in one command, from the repository root, on a
# machine with an NVIDIA GPU. It needs no package registry: it builds against the python3 that
# holds a CUDA build of torch (PY=... to choose another; BUILD=make uses `make build`'s .venv).
# Stages, all inside BUDGET seconds (default 470), each cut to what is left:
#   1 build for this GPU's architecture only (TORCH_CUDA_ARCH_LIST to override)
#   2 every CUDA test case (pytest -k cuda), in parallel with
#   3 compute-sanitizer memcheck / racecheck / synccheck (and initcheck, advisory) on
#     benchmarks/cuda_driver.py, which runs every CUDA op against its CPU kernel
#   4 host syncs per op, tensors past 2^31 elements, an out-of-range block index
#   5 the benchmarks on CUDA: benchmarks/results/cuda-<gpu>.{json,md} and plots
# Logs in $W (default /tmp/winnow-gpu-check); when OUT names a folder, summary.txt, logs.tgz and
# results.tgz (the benchmark results, to unpack into benchmarks/results) are copied there.
# Exit: 0 every check passed, 1 one failed, 2 no GPU here.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS; BUDGET=${BUDGET:-470}; W=${W:-/tmp/winnow-gpu-check}; rm -rf "$W"; mkdir -p "$W"
SUMMARY=(); BAD=0
left() { echo $(( BUDGET - (SECONDS - T0) )); }
cap() { local l; l=$(left); if (( l < $1 )); then echo $(( l > 10 ? l : 10 )); else echo "$1"; fi; }
say() { echo "=== [$((SECONDS - T0))s] $*"; }
res() { SUMMARY+=("$1"); [[ $1 == FAIL* ]] && BAD=1; echo "$1"; }
finish() {
  say "summary"; printf '%s\n' "${SUMMARY[@]}" | tee "$W/summary.txt"
  if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    cp "$W/summary.txt" "$OUT/"; tar -C "$W" -czf "$OUT/logs.tgz" .
    ls benchmarks/results/*cuda* >/dev/null 2>&1 && tar -C benchmarks/results -czf "$OUT/results.tgz" \
      $(cd benchmarks/results && ls -- *cuda*)
  fi
  exit $BAD
}

say "0 GPU and tools"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi lists none). This check needs one; on a CPU machine run make test."
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}; export PATH="$CUDA_HOME/bin:$PATH"
CS=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
nvcc --version | tail -1; [[ -n $CS ]] && "$CS" --version | tail -1
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$CC} MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

say "1 build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if [[ ${BUILD:-inplace} == make ]]; then
  timeout "$(cap 330)" make build >"$W/build.log" 2>&1; rc=$?; PY=$PWD/.venv/bin/python; how="make build"
else
  PY=${PY:-$(command -v python3)}
  WINNOW_CUDA=1 timeout "$(cap 300)" "$PY" setup.py build_ext --inplace >"$W/build.log" 2>&1; rc=$?
  export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"; how="in place against $PY's torch"
fi
if ! "$PY" -c "import winnow; i = winnow.build_info(); print(i)
assert i['cuda_kernels'] and i['cuda_available'], 'no CUDA kernels or no GPU: every CUDA test would drop out'" \
     >"$W/build_info.log" 2>&1; then
  tail -30 "$W/build.log"; cat "$W/build_info.log"; res "FAIL build ($how, rc=$rc): see build.log"; finish
fi
res "PASS build ($how, $((SECONDS - T0))s): $(tail -1 "$W/build_info.log")"
grep -E "warning" "$W/build.log" | grep -E "\.cu|\.cuh" | sort -u > "$W/nvcc_warnings.txt"
[[ -s $W/nvcc_warnings.txt ]] && res "NOTE nvcc warnings: $(wc -l <"$W/nvcc_warnings.txt") (nvcc_warnings.txt)"

DRV=benchmarks/cuda_driver.py
say "2+3 CUDA tests and compute-sanitizer, in parallel"
T=$(cap 270)
( timeout "$T" "$PY" -m pytest -q -rfEs -p no:cacheprovider tests -k "cuda or device_mismatch" \
    >"$W/pytest_cuda.log" 2>&1; echo $? >"$W/pytest_cuda.rc" ) &
sanitize() {  # sanitize NAME TOOL [driver options]
  local name=$1 tool=$2; shift 2
  ( PYTORCH_NO_CUDA_MEMORY_CACHING=1 OMP_NUM_THREADS=2 timeout "$T" "$CS" --tool "$tool" --error-exitcode 86 \
      --print-limit 20 "$PY" "$DRV" "$@" >"$W/cs_$name.log" 2>&1; echo $? >"$W/cs_$name.rc" ) &
}
if [[ -n $CS ]]; then
  sanitize memcheck memcheck --mode check
  sanitize racecheck racecheck --mode check --only importance,rank,topk,oba
  sanitize synccheck synccheck --mode check --only importance,rank,topk,oba
  sanitize initcheck initcheck --mode check --only importance,adamw,rank,topk,oba
else
  res "FAIL no compute-sanitizer found (the CUDA toolkit's bin/)"
fi
wait

rc=$(cat "$W/pytest_cuda.rc" 2>/dev/null || echo 124)
line=$(grep -E "(passed|failed|error)" "$W/pytest_cuda.log" | tail -1)
ran=$(grep -oE "[0-9]+ (passed|failed|errors?)" <<<"$line" | awk '{s += $1} END {print s + 0}')
MIN_TESTS=${MIN_TESTS:-330}  # `pytest --collect-only -k cuda` counts 336 today
(( ran < MIN_TESTS )) && res "FAIL only $ran CUDA test cases ran (at least $MIN_TESTS expected)"
if [[ $rc == 0 ]]; then res "PASS CUDA tests: $line"; else
  res "FAIL CUDA tests (rc=$rc): $line"; grep -E "^(FAILED|ERROR)" "$W/pytest_cuda.log" | head -20; fi
for t in memcheck racecheck synccheck initcheck; do
  [[ -f $W/cs_$t.rc ]] || continue
  rc=$(cat "$W/cs_$t.rc"); summary=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$W/cs_$t.log" | tail -1)
  case $rc in
    0) res "PASS $t: $summary";;
    86) if [[ $t == initcheck ]]; then res "NOTE initcheck (advisory: torch's own kernels report too): $summary"
        else res "FAIL $t: $summary"; grep -m5 -E "Invalid|Race|hazard|Barrier|========= [A-Z]" "$W/cs_$t.log"; fi;;
    1) res "FAIL $t: CUDA differs from CPU: $(grep -c '^MISMATCH' "$W/cs_$t.log") mismatches"
       grep -m10 '^MISMATCH' "$W/cs_$t.log";;
    124) res "FAIL $t: timed out after ${T}s (raise BUDGET)";;
    *) res "FAIL $t: rc=$rc"; tail -5 "$W/cs_$t.log";;
  esac
done

say "4 host syncs, 64-bit indexing, a bad block index"
for mode in syncs big bad-block; do
  timeout "$(cap 120)" "$PY" "$DRV" --mode "$mode" >"$W/$mode.log" 2>&1; rc=$?
  if [[ $rc == 0 ]]; then res "PASS $mode: $(grep -E '^(big:|bad block|syncs:)' "$W/$mode.log" | tail -1)"
  else res "FAIL $mode (rc=$rc): $(grep -E '^MISMATCH|Error' "$W/$mode.log" | head -3 | tr '\n' ' ')"; fi
done
grep "host syncs in" "$W/syncs.log"

say "5 CUDA benchmarks"
if (( $(left) > 40 )); then
  names=(sweep importance masked_adamw adalora hvp)
  "$PY" -c "import selective_optimizers" 2>/dev/null && names+=(id3)  # the ID3 anchor
  timeout "$(cap 200)" "$PY" -m benchmarks "${names[@]}" --device cuda >"$W/bench.log" 2>&1; rc=$?
  "$PY" -m benchmarks --report-only --device cuda >>"$W/bench.log" 2>&1
  if [[ $rc == 0 ]]; then res "PASS benchmarks (${names[*]}): $(grep -c '^report:' "$W/bench.log") report files"
  else res "NOTE benchmarks rc=$rc (bench.log)"; fi
  grep -B2 -A14 -E "^## |GB/s" "$W/bench.log" | head -60
else
  res "NOTE benchmarks skipped: budget spent"
fi
finish
