#!/usr/bin/env bash
# Snapshot cost with little change: a volume of SIZE_GIB (default 10) GiB in 64 MiB
# files, a first snapshot, then ROUNDS (default 5) times: 1% of the volume written anew
# (two files), a snapshot job through the API. Prints, per round and as the median, the
# job's pre-flush time and the time from the freeze to the recorded snapshot (what the
# snapshot itself costs), and the freeze. Loopback only; installs libnfs-utils.
#   scripts/bench-snapshot.sh    env: SIZE_GIB, ROUNDS, BENCH_DIR (default
#   $TMPDIR/kura-snapshot-bench), KURA_BIN (default target/release/kura, built)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_GIB=${SIZE_GIB:-10}
ROUNDS=${ROUNDS:-5}
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/kura-snapshot-bench}
if [ -z "${KURA_BIN:-}" ]; then cargo build --release -p kura -q; KURA_BIN=$PWD/target/release/kura; fi
command -v nfs-cp >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnfs-utils >/dev/null; }
rm -rf "$DIR"; mkdir -p "$DIR/src"
for i in 0 1 2 3; do head -c $((64 << 20)) /dev/urandom > "$DIR/src/f$i"; done
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
start_kura "$KURA_BIN" "$DIR"
trap 'kill $KPID 2>/dev/null || true' EXIT
url() { echo "nfs://127.0.0.1/backup/$1?nfsport=$PORT&mountport=$PORT&version=3"; }
N=$((SIZE_GIB * 16))
for i in $(seq 0 $((N - 1))); do nfs-cp "$DIR/src/f$((i % 4))" "$(url "base-$i")" >/dev/null; done
curl -s -X POST "$API/ingest" >/dev/null
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"s0"}' "$API/volumes/backup/snapshots"
for r in $(seq "$ROUNDS"); do
  # 1% new: two files of SIZE_GIB * 1024 / 200 MiB each, fresh random bytes.
  for j in 0 1; do
    head -c $((SIZE_GIB * 1024 / 200 << 20)) /dev/urandom > "$DIR/src/new"
    nfs-cp "$DIR/src/new" "$(url "new-$r-$j")" >/dev/null
  done
  curl -s -X POST -H 'content-type: application/json' -d "{\"name\":\"s$r\"}" "$API/volumes/backup/snapshots" > "$DIR/job-$r.json"
done
python3 - "$DIR" "$ROUNDS" "$SIZE_GIB" <<'PY'
import json, re, statistics, sys
d, rounds, gib = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pre, snap, frz, total = [], [], [], []
for r in range(1, rounds + 1):
    j = json.load(open(f"{d}/job-{r}.json"))["job"]
    m = re.search(r"pre-flush (\d+) ms; freeze to recorded snapshot (\d+) ms", j["output"])
    pre.append(int(m.group(1))); snap.append(int(m.group(2))); frz.append(j["freeze_ms"])
    total.append(j["ended_ms"] - j["started_ms"])
    print(f"round {r}: pre-flush {pre[-1]} ms, freeze->recorded {snap[-1]} ms, freeze {frz[-1]} ms, job {total[-1]} ms")
med = statistics.median
print(f"{gib} GiB volume, 1% new per round, median of {rounds}: pre-flush {med(pre)} ms, "
      f"freeze->recorded snapshot {med(snap)} ms, freeze {med(frz)} ms, whole job {med(total)} ms")
PY
