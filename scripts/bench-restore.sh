#!/usr/bin/env bash
# Restore speed: `kura restore` against `restic restore` of the same files on the same
# disk, cold page cache (caches dropped before every run), median of RUNS (default 3).
# The files go into kura over NFS (nfs-cp) and into restic with `restic backup`, one
# generation per file (night1, night2, ...: a kura snapshot and a restic snapshot
# each); the newest file is restored from the newest generation. Needs root (drop_caches); installs restic and libnfs-utils.
#   scripts/bench-restore.sh [RUNS]   env: CORPUS (default $TMPDIR/kura-corpus),
#   PART (dumps, tree or vmimage; default: dumps if present, else tree),
#   BENCH_DIR (default $TMPDIR/kura-restore-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
CORPUS=${CORPUS:-${TMPDIR:-/tmp}/kura-corpus}
if [ -z "${PART:-}" ]; then
  if [ -d "$CORPUS/dumps" ]; then PART=dumps; else PART=tree; fi
fi
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/kura-restore-bench}
for p in restic libnfs-utils; do
  command -v "${p%%-*}" >/dev/null 2>&1 || dpkg -s "$p" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null; }
done
cargo build --release -p kura -q
KURA=$PWD/target/release/kura
rm -rf "$DIR"; mkdir -p "$DIR"
FILES=$(ls "$CORPUS/$PART")
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
start_kura "$KURA" "$DIR"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$DIR/restic"
restic init -q
# One generation per file, in name order (night1, night2, night3 / v1, v2).
mkdir -p "$DIR/gen"
LAST=
for f in $FILES; do
  g="${f%.*}"
  nfs-cp "$CORPUS/$PART/$f" "nfs://127.0.0.1/backup/$f?nfsport=$PORT&mountport=$PORT&version=3" >/dev/null
  "$KURA" --config "$DIR/kura.toml" snapshot create backup "$g" >/dev/null
  rm -f "$DIR/gen/"*; cp "$CORPUS/$PART/$f" "$DIR/gen/$f"
  restic backup -q --host bench "$DIR/gen" >/dev/null
  LAST=$g; LASTF=$f
done
kill -TERM $KPID; wait $KPID || true
BYTES=$(stat -c %s "$DIR/gen/$LASTF")
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
k=(); r=()
for i in $(seq "$RUNS"); do
  rm -rf "$DIR/out-k" "$DIR/out-r"
  drop; t0=$(date +%s.%N)
  "$KURA" --config "$DIR/kura.toml" restore backup "$LAST" "$LASTF" --to "$DIR/out-k" 2>/dev/null
  t1=$(date +%s.%N); k+=("$(echo "$BYTES / ($t1 - $t0) / 1000000" | bc -l)")
  drop; t0=$(date +%s.%N)
  restic restore -q latest --target "$DIR/out-r" >/dev/null
  t1=$(date +%s.%N); r+=("$(echo "$BYTES / ($t1 - $t0) / 1000000" | bc -l)")
  cmp "$DIR/out-k/$LASTF" "$DIR/gen/$LASTF"
done
python3 - "$PART" "$BYTES" "${k[*]}" "${r[*]}" <<'PY'
import statistics, sys
part, size, k, r = sys.argv[1], int(sys.argv[2]), [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
mk, mr = statistics.median(k), statistics.median(r)
print(f"{part}: newest generation {size/1e6:.0f} MB, cold cache, median of {len(k)}")
print(f"kura restore   {mk:7.0f} MB/s  ({', '.join(f'{x:.0f}' for x in k)})")
print(f"restic restore {mr:7.0f} MB/s  ({', '.join(f'{x:.0f}' for x in r)})")
print(f"ratio kura/restic {mk/mr:.2f}x")
PY
