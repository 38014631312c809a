#!/usr/bin/env bash
# Sourced by the bundle's run.sh and bench.sh with $here, $BACKEND and $lib_dir set: for a
# CUDA bundle, finds the CUDA libraries the binaries link to and puts them on LD_LIBRARY_PATH;
# the driver's libcuda.so.1 comes from the system. CUDA libraries are searched in $lib_dir
# (--cuda-lib-dir), $CUDA_HOME, /usr/local/cuda and any site-packages/nvidia/*/lib.
if [ "$BACKEND" = cuda ]; then
  wanted=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)
  candidates=()
  [ -n "$lib_dir" ] && candidates+=("$lib_dir")
  [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
  candidates+=(/usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
  while IFS= read -r dir; do candidates+=("$dir"); done < <(
    find /opt /usr /root /home -maxdepth 9 -type d -path '*/site-packages/nvidia/*/lib' 2>/dev/null | sort
  )
  found=()
  for lib in "${wanted[@]}"; do
    for dir in "${candidates[@]}"; do
      if [ -e "$dir/$lib" ]; then found+=("$dir"); continue 2; fi
    done
    echo "$(basename "$0"): $lib not found; pass --cuda-lib-dir DIR (searched: ${candidates[*]})" >&2
    exit 1
  done
  lib_path="$(printf '%s\n' "${found[@]}" | awk '!seen[$0]++' | paste -sd: -)"
  export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "CUDA libraries from: $lib_path"
  if ldd "$here"/bin/* | grep 'not found'; then
    echo "$(basename "$0"): the binaries have unresolved libraries (above)" >&2
    exit 1
  fi
fi

