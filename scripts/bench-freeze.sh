#!/usr/bin/env bash
# Freeze window under load: N snapshot jobs (default 50) of one volume through the
# control API while a client (libnfs-utils nfs-cp) writes new files into it without a
# pause. Prints p50/p99/max of the freeze window (first held call to the thaw, what a
# client sees), of the whole freeze and of the job, the results, and the client's
# MB/s. Loopback only.
#   scripts/bench-freeze.sh [N]    env: KURA_BIN (default target/release/kura, built),
#   BENCH_DIR (default $TMPDIR/kura-freeze-bench), FILE_MIB (256), FILES (6), GAP (0.5 s)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
FILE_MIB=${FILE_MIB:-256}
FILES=${FILES:-6}
GAP=${GAP:-0.5}
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/kura-freeze-bench}
if [ -z "${KURA_BIN:-}" ]; then
  cargo build --release -p kura -q
  KURA_BIN=$PWD/target/release/kura
fi
command -v nfs-cp >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnfs-utils >/dev/null; }
rm -rf "$DIR"; mkdir -p "$DIR/src"
for i in $(seq 0 $((FILES - 1))); do
  head -c $((FILE_MIB << 20)) /dev/urandom > "$DIR/src/f$i"
done
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
start_kura "$KURA_BIN" "$DIR"
trap 'kill $KPID 2>/dev/null || true; touch "$DIR/stop"' EXIT
URL="nfs://127.0.0.1/backup/%s?nfsport=$PORT&mountport=$PORT&version=3"
(
  i=0
  while [ ! -e "$DIR/stop" ]; do
    # shellcheck disable=SC2059
    nfs-cp "$DIR/src/f$((i % FILES))" "$(printf "$URL" "w$i")" > /dev/null
    echo "$i" > "$DIR/written"
    i=$((i + 1))
  done
) &
WPID=$!
sleep 3
CPU0=$(awk '{print $14 + $15}' /proc/$KPID/stat)
T0=$(date +%s.%N)
W0=$(cat "$DIR/written" 2>/dev/null || echo 0)
for _ in $(seq "$N"); do
  curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{}' "$API/volumes/backup/snapshots"
  sleep "$GAP"
done
T1=$(date +%s.%N)
W1=$(cat "$DIR/written")
CPU1=$(awk '{print $14 + $15}' /proc/$KPID/stat)
touch "$DIR/stop"
wait $WPID || true
curl -s "$API/jobs?volume=backup&limit=$N" > "$DIR/jobs.json"
python3 - "$DIR/jobs.json" "$T0" "$T1" "$W0" "$W1" "$FILE_MIB" "$CPU0" "$CPU1" <<'PY'
import json, sys
jobs = json.load(open(sys.argv[1]))
t0, t1, w0, w1, mib, c0, c1 = (float(x) for x in sys.argv[2:])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float('nan')
res = {}
for j in jobs:
    res[j['result']] = res.get(j['result'], 0) + 1
ok = [j for j in jobs if j['result'] == 'ok']
for key in ('window_ms', 'freeze_ms'):
    v = [j[key] for j in jobs if j[key] is not None]
    print(f"{key:10} p50 {pct(v,50):6} p99 {pct(v,99):6} max {max(v) if v else 'n/a':6}  (n={len(v)})")
dur = [j['ended_ms'] - j['started_ms'] for j in jobs]
print(f"job_ms     p50 {pct(dur,50):6} p99 {pct(dur,99):6} max {max(dur):6}")
print("results", res)
secs = t1 - t0
print(f"client wrote {(w1 - w0) * mib:.0f} MiB in {secs:.1f} s = {(w1 - w0) * mib / secs:.0f} MiB/s during the snapshots")
print(f"kura CPU {(c1 - c0) / 100 / secs * 100:.0f}% of one core")
PY
