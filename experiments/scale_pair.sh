#!/usr/bin/env bash
# Issue 16's digits acceptance pair, side by side (one thread each), each with a fresh cache directory, its
# process peak from /usr/bin/time -v and its resident set sampled once a second (OUT_DIR/rss_<n>.txt: seconds, MiB).
#   experiments/scale_pair.sh OUT_DIR
set -euo pipefail
out="${1:?usage: experiments/scale_pair.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
pids=()
for n in 32768 8192; do
  dir="$out/run_$n"
  mkdir -p "$dir"
  ( cd "$dir" && exec /usr/bin/time -v -o "$dir/time_v.txt" tfmq-exp model=digits method=qdiffusion quant=w8a8 \
      calib.num_samples=1024 calib.uniform_every=1 calib.memory_budget_mb=64 calib.recon_samples="$n" \
      runtime.cache_dir="$dir/cache" hydra.run.dir="$dir/run" >"$dir/stdout.txt" 2>"$dir/stderr.txt" ) &
  pids+=("$!")
done
start=$(date +%s)
while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null; do
  for i in 0 1; do
    n=$([ "$i" = 0 ] && echo 32768 || echo 8192)
    for p in $(pgrep -P "${pids[$i]}" || true); do
      rss=$(awk '/VmRSS/{print int($2/1024)}' "/proc/$p/status" 2>/dev/null || true)
      [ -n "$rss" ] && echo "$(( $(date +%s) - start )) $rss" >>"$out/rss_$n.txt"
    done
  done
  sleep 1
done
grep -H "Maximum resident\|Elapsed" "$out"/run_*/time_v.txt
