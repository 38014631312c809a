#!/usr/bin/env bash
# Benchmarks the worker of this bundle on random-weight models with real models' shapes, made
# here by the worker itself (`llm-worker-rbee synth`, so no weights travel), and packs the
# figures into one archive: per shape and dtype the bench JSON and its log.
#
#   ./bench.sh [--shape NAME]... [--dtype bf16|f16|f32]... [--engine candle|fast]...
#              [--prompt-len N,..] [--gen N] [--reps N] [--check] [--peer DIR]
#              [--cuda-lib-dir DIR] [--out FILE]
#
# --shape may repeat (default tinyllama-1.1b and qwen2.5-0.5b), and so may --dtype (default
# bf16) and --engine (default: the worker's choice; each named engine runs in turn, its JSON
# named ...-engine-NAME.json). --check compares each run with targets.toml
# (ci/bench/targets.toml) and exits non-zero when a target that applies is missed.
# --peer DIR runs llama.cpp's llama-bench from DIR (the unpacked ../shared/peers/llama.cpp: its
# binaries and libraries, mkgguf.py and gguf-py) after the worker on each shape and dtype, on a
# random-weight GGUF of the same shape, prefill of the same prompt lengths and decode of the same
# count after them, flash attention on; its JSON and the worker/llama.cpp ratios go beside the
# worker's (...-peer-llama.cpp.json). Shapes are kept in shapes/ for the next run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
source "$here/bundle.env"

shapes=()
dtypes=()
engines=()
peer=""
bench_args=()
check=0
lib_dir=""
out="$PWD/bench-results.tar.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shapes+=("$2"); shift 2 ;;
    --dtype) dtypes+=("$2"); shift 2 ;;
    --engine) engines+=("$2"); shift 2 ;;
    --peer) peer="$(cd "$2" && pwd)"; shift 2 ;;
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
[ ${#engines[@]} -gt 0 ] || engines=("")

# shellcheck source=/dev/null
source "$here/cuda-env.sh"

# llama-bench on a GGUF of `shape` in `dtype`, at the prompt lengths and token count of the
# worker's runs, then the ratios of each worker JSON of that shape and dtype in `results` to it.
peer_bench() {
  local shape="$1" dtype="$2" results="$3"
  local workers=("$results/$shape-$BACKEND-$dtype"*.json)
  [ -f "${workers[0]}" ] || { echo "no worker bench of $shape $dtype to compare with" >&2; return 1; }
  local prompt_lens gen
  read -r prompt_lens gen < <(python3 -c 'import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
print(",".join(str(r["prompt_len"]) for r in runs), runs[0]["gen"])' "${workers[0]}")
  local gguf="$here/shapes/$shape-$dtype.gguf"
  local f16="$here/shapes/$shape-f16.gguf"
  if [ ! -f "$f16" ]; then
    PYTHONPATH="$peer/gguf-py" python3 "$peer/mkgguf.py" "$shape" "$f16.tmp" && mv "$f16.tmp" "$f16"
  fi
  if [ ! -f "$gguf" ]; then
    LD_LIBRARY_PATH="$peer${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      "$peer/llama-quantize" "$f16" "$gguf.tmp" "$(echo "$dtype" | tr a-z A-Z)" && mv "$gguf.tmp" "$gguf"
  fi
  local json="$results/$shape-$BACKEND-$dtype-peer-llama.cpp.json"
  LD_LIBRARY_PATH="$peer${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$peer/llama-bench" -m "$gguf" -ngl 99 -fa 1 -r 3 -p "$prompt_lens" -n "$gen" \
    -d "0,$prompt_lens" -o json > "$json.bench"
  python3 - "$json" "$shape" "$dtype" "$prompt_lens" "$gen" "${workers[@]}" <<'PY'
import json, os, sys
out, shape, dtype, prompts, gen = sys.argv[1:6]
prompts = [int(p) for p in prompts.split(",")]
gen = int(gen)
rows = json.load(open(out + ".bench"))
def peer(n_prompt, n_gen, depth):
    for r in rows:
        if (r["n_prompt"], r["n_gen"], r["n_depth"]) == (n_prompt, n_gen, depth):
            return r["avg_ts"]
    return None
summary = {"peer": "llama.cpp llama-bench -fa 1 -ngl 99 -r 3", "shape": shape, "dtype": dtype,
           "llama_bench": rows, "ratios": []}
for path in sys.argv[6:]:
    worker = json.load(open(path))
    for run in worker["runs"]:
        p = run["prompt_len"]
        decode = peer(0, gen, p)
        prefill = peer(p, 0, 0)
        ratio = {"worker": os.path.basename(path), "engine": worker.get("engine", "candle"),
                 "prompt_len": p, "gen": gen,
                 "worker_decode_tokens_per_s": run["decode_tokens_per_s"]["median"],
                 "peer_decode_tokens_per_s": decode,
                 "worker_prefill_tokens_per_s": run["prefill_tokens_per_s"]["median"],
                 "peer_prefill_tokens_per_s": prefill}
        ratio["decode_ratio"] = decode and ratio["worker_decode_tokens_per_s"] / decode
        ratio["prefill_ratio"] = prefill and ratio["worker_prefill_tokens_per_s"] / prefill
        summary["ratios"].append(ratio)
        if decode is None or prefill is None:
            print(f"{shape} {dtype} prompt {p}: llama-bench has no row for it", file=sys.stderr)
            sys.exit(1)
        print(f"{shape} {dtype} engine {ratio['engine']} prompt {p}: decode worker "
              f"{ratio['worker_decode_tokens_per_s']:.1f} / llama.cpp {decode:.1f} tokens/s = "
              f"{ratio['decode_ratio']:.2f}x; prefill {ratio['worker_prefill_tokens_per_s']:.0f} / "
              f"{prefill:.0f} = {ratio['prefill_ratio']:.2f}x")
json.dump(summary, open(out, "w"), indent=2)
os.remove(out + ".bench")
PY
}

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
    for engine in "${engines[@]}"; do
      label="$shape-$BACKEND-$dtype${engine:+-engine-$engine}"
      args=(bench --model "$model" --backend "$BACKEND" --dtype "$dtype" --json "$results/$label.json")
      [ -z "$engine" ] || args+=(--engine "$engine")
      [ "$check" = 0 ] || args+=(--check "$here/targets.toml")
      if ! "$here/bin/llm-worker-rbee" "${args[@]}" "${bench_args[@]}" 2>&1 | tee "$results/$label.log"; then
        status=1
      fi
    done
    if [ -n "$peer" ]; then
      if ! peer_bench "$shape" "$dtype" "$results" 2>&1 | tee "$results/$shape-$BACKEND-$dtype-peer-llama.cpp.log"; then
        status=1
      fi
    fi
  done
done
tar czf "$out" -C "$work" bench
echo "bench results: $out"
rm -rf "$work"
exit "$status"
