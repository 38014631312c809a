#!/usr/bin/env bash
# Benchmarks the worker of this bundle on random-weight models with real models' shapes, made
# here by the worker itself (`llm-worker-rbee synth`, so no weights travel), and packs the
# figures into one archive: per shape and dtype the bench JSON and its log.
#
#   ./bench.sh [--shape NAME]... [--dtype bf16|f16|f32]... [--prompt-len N,..] [--gen N]
#              [--reps N] [--check] [--cuda-lib-dir DIR] [--out FILE]
#
# --shape may repeat (default tinyllama-1.1b and qwen2.5-0.5b), and so may --dtype (default
# bf16). --check compares each run with targets.toml (ci/bench/targets.toml) and exits non-zero
# when a target that applies is missed. Shapes are kept in shapes/ for the next run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
source "$here/bundle.env"

shapes=()
dtypes=()
bench_args=()
check=0
lib_dir=""
out="$PWD/bench-results.tar.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shapes+=("$2"); shift 2 ;;
    --dtype) dtypes+=("$2"); shift 2 ;;
    --prompt-len | --gen | --reps) bench_args+=("$1" "$2"); shift 2 ;;
    --check) check=1; shift ;;
    --cuda-lib-dir) lib_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#shapes[@]} -gt 0 ] || shapes=(tinyllama-1.1b qwen2.5-0.5b)
[ ${#dtypes[@]} -gt 0 ] || dtypes=(bf16)

# shellcheck source=/dev/null
source "$here/cuda-env.sh"

work="$(mktemp -d)"
results="$work/bench"
mkdir -p "$results"
status=0
for shape in "${shapes[@]}"; do
  for dtype in "${dtypes[@]}"; do
    model="$here/shapes/$shape-$dtype"
    if [ ! -f "$model/synth-shape.json" ]; then
      "$here/bin/llm-worker-rbee" synth --shape "$shape" --dtype "$dtype" --out "$model"
    fi
    label="$shape-$BACKEND-$dtype"
    args=(bench --model "$model" --backend "$BACKEND" --dtype "$dtype" --json "$results/$label.json")
    [ "$check" = 0 ] || args+=(--check "$here/targets.toml")
    if ! "$here/bin/llm-worker-rbee" "${args[@]}" "${bench_args[@]}" 2>&1 | tee "$results/$label.log"; then
      status=1
    fi
  done
done
tar czf "$out" -C "$work" bench
echo "bench results: $out"
rm -rf "$work"
exit "$status"
