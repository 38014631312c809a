#!/usr/bin/env bash
# Makes the fixture models (checked against their lock) and runs the conformance suite from this
# bundle, on a machine with no Rust and no network, and
# packs what a reviewer needs into one results archive: per dtype report.json, junit.xml, the
# harness log, the logs of the CUDA fast path's checks (cuda_*.txt, cuda bundles), and every
# pending snapshot (.snap.new); never accepts a snapshot.
#
#   ./run.sh [--dtype f32|bf16|f16]... [--via library|http|openai]... [--engine fast|candle]...
#            [--fault-injection] [--cuda-lib-dir DIR] [--host-label LABEL] [--out FILE]
#            [-- FILTER...]
#
# --dtype may repeat (default f32), and so may --via (default library): `http` runs the trials
# through a `llm-worker-rbee serve` process per model (bin/llm-worker-rbee) and checks the same
# goldens, `openai` through the same server's OpenAI API. --engine may repeat too (default: the worker's, fast on cuda for the models it
# covers); a run on an engine other than the default has its results in a folder whose name ends
# in it (cuda-bf16-candle). --fault-injection also runs the harness built with the
# worker's fault-injection feature, which must fail. CUDA libraries are searched in
# --cuda-lib-dir, $CUDA_HOME, /usr/local/cuda and any site-packages/nvidia/*/lib. Exits non-zero
# when a trial failed or the fault-injection run passed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
source "$here/bundle.env"

dtypes=()
transports=()
engines=()
fault=0
lib_dir=""
host="$(hostname 2>/dev/null || echo unknown-host)"
out="$PWD/results.tar.gz"
filters=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype) dtypes+=("$2"); shift 2 ;;
    --via) transports+=("$2"); shift 2 ;;
    --engine) engines+=("$2"); shift 2 ;;
    --fault-injection) fault=1; shift ;;
    --cuda-lib-dir) lib_dir="$2"; shift 2 ;;
    --host-label) host="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; filters=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#dtypes[@]} -gt 0 ] || dtypes=(f32)
[ ${#transports[@]} -gt 0 ] || transports=(library)
default_engine=candle
[ "$BACKEND" != cuda ] || default_engine=fast
[ ${#engines[@]} -gt 0 ] || engines=("$default_engine")
for engine in "${engines[@]}"; do
  case "$engine" in
    candle | fast) ;;
    *) echo "run.sh: --engine takes fast or candle, not '$engine'" >&2; exit 2 ;;
  esac
done
for via in "${transports[@]}"; do
  case "$via" in
    library | http | openai) ;;
    *) echo "run.sh: --via takes library, http or openai, not '$via'" >&2; exit 2 ;;
  esac
done

# The CUDA libraries the binaries link to (sets LD_LIBRARY_PATH).
# shellcheck source=/dev/null
source "$here/cuda-env.sh"

work="$(mktemp -d)"
results="$work/results"
mkdir -p "$results/snapshots"
unset CI
export INSTA_WORKSPACE_ROOT="$here" INSTA_UPDATE=new
export CONFORMANCE_CASES="$here/conformance/cases.toml" CONFORMANCE_FIXTURES="$here/fixtures"
export CONFORMANCE_GOLDEN="$here/golden" CONFORMANCE_BACKENDS="$BACKEND"
export CONFORMANCE_HOST="$host" CONFORMANCE_GIT_COMMIT="$GIT_COMMIT" CONFORMANCE_GIT_DIRTY="$GIT_DIRTY"
find "$here/golden/snapshots" -name '*.snap.new' -delete

# The fixtures are made here by the harness (deterministic bytes) and must match the lock.
CONFORMANCE_WRITE_FIXTURES=1 "$here/bin/conformance" --list > /dev/null
if ! (cd "$here/fixtures" && sha256sum --quiet -c "$here/conformance/fixtures.lock"); then
  echo "run.sh: the fixtures made here differ from conformance/fixtures.lock" >&2
  exit 1
fi
echo "fixtures: $(wc -l < "$here/conformance/fixtures.lock") files match conformance/fixtures.lock"

status=0
# First the CUDA fast path's checks (worker/tests/cuda_*.rs): each kernel against the candle ops
# it replaces, the fast engine against the candle engine.
for check in "$here"/bin/cuda_*; do
  [ -x "$check" ] || continue
  name="$(basename "$check")"
  if "$check" --nocapture --test-threads=1 2>&1 | tee "$results/$name.txt"; then
    echo "$name: passed (results/$name.txt)"
  else
    echo "run.sh: $name failed (results/$name.txt)" >&2
    status=1
  fi
done
run_harness() { # binary, dtype, transport, engine, results subfolder
  local dir="$results/$5"
  mkdir -p "$dir"
  CONFORMANCE_DTYPES="$2" CONFORMANCE_TRANSPORT="$3" CONFORMANCE_ENGINE="$4" \
    CONFORMANCE_WORKER="$here/bin/llm-worker-rbee" \
    CONFORMANCE_RECORDS="$dir/records" CONFORMANCE_REPORT_DIR="$dir" \
    "$here/bin/$1" "${filters[@]}" 2>&1 | tee "$dir/log.txt"
  return "${PIPESTATUS[0]}"
}
for engine in "${engines[@]}"; do
  for via in "${transports[@]}"; do
    for dtype in "${dtypes[@]}"; do
      suffix=""
      [ "$engine" = "$default_engine" ] || suffix="-$engine"
      [ "$via" = library ] || suffix="$suffix-$via"
      run_harness conformance "$dtype" "$via" "$engine" "$BACKEND-$dtype$suffix" || status=1
    done
  done
done
if [ "$fault" = 1 ]; then
  # On candle's modules: the injected fault skips their cache reset; the fast engine's cache is
  # addressed by position and has nothing to reset.
  if INSTA_UPDATE=no run_harness conformance-fault-injection f32 library candle "fault-injection-$BACKEND-f32" > /dev/null; then
    echo "run.sh: the fault-injection run passed; it must fail" >&2
    status=1
  else
    echo "fault-injection run failed, as it must (results/fault-injection-$BACKEND-f32/report.json)"
  fi
fi

find "$here/golden/snapshots" -name '*.snap.new' -exec cp {} "$results/snapshots/" \;
tar czf "$out" -C "$work" results
echo "results: $out ($(find "$results/snapshots" -name '*.snap.new' | wc -l) pending snapshots)"
rm -rf "$work"
exit "$status"
