#!/usr/bin/env bash
# Daemon memory and freeze windows over a long run: 3 volumes, each snapshotted every
# minute by its schedule (retention keep_last = 10, GC every 10 minutes), while one
# client per volume (libnfs-utils nfs-cp) writes a 256 MiB file into it every PAUSE
# seconds (default 12: ~60 MB/s together, what the ingester keeps up with here; new
# names, the data repeats, so the store stays small while the namespace and the
# snapshots grow). Samples the daemon's RSS every
# 10 s; at the end prints RSS (first and last 5 minutes, max), the snapshot jobs'
# results and freeze windows (p50/p99/max), GC results and the clients' MB/s.
# Loopback only.
#   scripts/bench-rss.sh [MINUTES]   (default 30)   env: KURA_BIN (default
#   target/release/kura, built), BENCH_DIR (default $TMPDIR/kura-rss-bench), PAUSE,
#   EXTRA_TOML (top-level config lines, e.g. "read_cache_mib = 64")
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/kura-rss-bench}
PAUSE=${PAUSE:-12}
if [ -z "${KURA_BIN:-}" ]; then
  cargo build --release -p kura -q
  KURA_BIN=$PWD/target/release/kura
fi
command -v nfs-cp >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnfs-utils >/dev/null; }
rm -rf "$DIR"; mkdir -p "$DIR/src"
for i in 0 1 2 3; do head -c $((256 << 20)) /dev/urandom > "$DIR/src/f$i"; done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo "data_dir = \"$DIR/store\""
  echo 'volumes = ["v1", "v2", "v3"]'
  echo "${EXTRA_TOML:-}"
  echo '[schedule]'
  echo 'gc = "*/10 * * * *"'
  for v in v1 v2 v3; do
    echo "[volume.$v]"
    echo 'schedule = ["* * * * *"]'
    echo 'keep_last = 10'
  done
  echo '[api]'
  echo 'listen = "127.0.0.1:0"'
  echo '[[export]]'
  echo "listen = \"127.0.0.1:$PORT\""
} > "$DIR/kura.toml"
"$KURA_BIN" --config "$DIR/kura.toml" serve > "$DIR/kura.out" 2> "$DIR/kura.log" &
KPID=$!
for _ in $(seq 100); do grep -q '^api ' "$DIR/kura.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^api ' "$DIR/kura.out" || { echo "kura did not start; see $DIR/kura.log" >&2; exit 1; }
API=$(sed -n 's/^api //p' "$DIR/kura.out")
trap 'touch "$DIR/stop"; kill $KPID 2>/dev/null || true' EXIT
for v in v1 v2 v3; do
  (
    i=0
    while [ ! -e "$DIR/stop" ]; do
      nfs-cp "$DIR/src/f$((i % 4))" "nfs://127.0.0.1/$v/w$i?nfsport=$PORT&mountport=$PORT&version=3" > /dev/null
      i=$((i + 1))
      echo "$i" > "$DIR/written-$v"
      sleep "$PAUSE"
    done
  ) &
done
T0=$(date +%s)
END=$((T0 + MINUTES * 60))
: > "$DIR/rss"
while [ "$(date +%s)" -lt "$END" ]; do
  # RSS (KiB) and the read cache's bytes, as a Prometheus scrape every 10 s sees them.
  cache=$(curl -s "$API/metrics" | awk '/^kura_read_cache_bytes /{print $2}')
  echo "$(($(date +%s) - T0)) $(ps -o rss= -p $KPID) ${cache:-0}" >> "$DIR/rss"
  sleep 10
done
touch "$DIR/stop"
wait_writers=0
for v in v1 v2 v3; do wait_writers=$((wait_writers + $(cat "$DIR/written-$v" 2>/dev/null || echo 0))); done
ELAPSED=$(($(date +%s) - T0))
"$KURA_BIN" --config "$DIR/kura.toml" jobs --limit 10000 --json > "$DIR/jobs.json"
kill -TERM $KPID; wait $KPID || true
python3 - "$DIR" "$MINUTES" "$wait_writers" "$ELAPSED" <<'PY'
import json, statistics, sys
d, minutes, files, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss = [tuple(map(int, l.split())) for l in open(f"{d}/rss") if len(l.split()) == 3]
mib = lambda kb: kb / 1024
first = [r for t, r, _ in rss if t < 300]
last = [r for t, r, _ in rss if t >= minutes * 60 - 300]
print(f"{minutes} min, 3 volumes snapshotted every minute, 3 nfs-cp writers (a 256 MiB file each per pause)")
print(f"daemon RSS MiB: first 5 min median {mib(statistics.median(first)):.0f}, "
      f"last 5 min median {mib(statistics.median(last)):.0f}, max {mib(max(r for _, r, _ in rss)):.0f} "
      f"({len(rss)} samples)")
print(f"read cache MiB: last 5 min median "
      f"{statistics.median([c for t, _, c in rss if t >= minutes * 60 - 300]) / 2**20:.0f}, "
      f"max {max(c for _, _, c in rss) / 2**20:.0f}; RSS without it: max "
      f"{max(r - c / 1024 for _, r, c in rss) / 1024:.0f} MiB")
jobs = json.load(open(f"{d}/jobs.json"))
snaps = [j for j in jobs if j["kind"] == "snapshot"]
res = {}
for j in snaps:
    res[j["result"]] = res.get(j["result"], 0) + 1
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")
win = [j["window_ms"] for j in snaps if j.get("window_ms") is not None]
frz = [j["freeze_ms"] for j in snaps if j.get("freeze_ms") is not None]
dur = [j["ended_ms"] - j["started_ms"] for j in snaps]
print(f"snapshot jobs: {len(snaps)} {res}")
print(f"freeze window ms: p50 {pct(win,50)} p99 {pct(win,99)} max {max(win) if win else '-'}; "
      f"whole freeze ms: p50 {pct(frz,50)} p99 {pct(frz,99)}")
print(f"snapshot job s: p50 {pct(dur,50)/1000:.1f} p99 {pct(dur,99)/1000:.1f}")
for k in ("prune", "gc"):
    ks = [j for j in jobs if j["kind"] == k]
    print(f"{k} jobs: {len(ks)}, results {sorted(set(j['result'] for j in ks))}")
print(f"clients wrote {files} files of 256 MiB: {files * 256 * 1.048576 / elapsed:.0f} MB/s together")
PY
