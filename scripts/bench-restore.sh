#!/usr/bin/env bash
# Restore speed: `kura restore` (the daemon writing the files, the CLI writing them from
# the daemon's tar with --stream, the CLI holding the store with no daemon) against
# `restic restore` of the same files on the same disk, cold page cache (caches dropped
# before every run), side by side in each round, median of RUNS (default 3).
# The files go into kura over NFS (nfs-cp) and into restic with `restic backup`, one
# generation per file (night1, night2, ...: a kura snapshot and a restic snapshot
# each); the newest file is restored from the newest generation, after a `kura gc` (the
# nightly GC, which regroups the newest generation's chunks into bundles of their own)
# and, side by side, from a copy of the store taken before it. Needs root (drop_caches);
# installs restic and libnfs-utils.
#   scripts/bench-restore.sh [RUNS]   env: CORPUS (default $TMPDIR/kura-corpus),
#   PART (dumps, tree or vmimage; default: dumps if present, else tree),
#   BENCH_DIR (default $TMPDIR/kura-restore-bench), KURA_BASELINE (another kura binary,
#   measured side by side without a daemon on a copy of the same store)
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
# The store as the snapshots left it (no GC yet), then the nightly GC on the store.
cp -a "$DIR/store" "$DIR/fresh-store"
sed "s#$DIR/store#$DIR/fresh-store#" "$DIR/kura.toml" > "$DIR/fresh.toml"
g0=$(date +%s.%N)
"$KURA" --config "$DIR/kura.toml" gc
echo "gc: $(echo "$(date +%s.%N) - $g0" | bc -l | cut -c1-5) s"
BASE=${KURA_BASELINE:-}
if [ -n "$BASE" ]; then
  # A copy of the store, opened once untimed (an older build may build its indexes).
  cp -a "$DIR/store" "$DIR/base-store"
  sed "s#$DIR/store#$DIR/base-store#" "$DIR/kura.toml" > "$DIR/base.toml"
  "$BASE" --config "$DIR/base.toml" snapshot list >/dev/null
fi
BYTES=$(stat -c %s "$DIR/gen/$LASTF")
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# One cold restore into DIR/out (the command's arguments after "restore"); prints MB/s.
timed() {
  rm -rf "$DIR/out"; drop; local t0 t1; t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s.%N); echo "$BYTES / ($t1 - $t0) / 1000000" | bc -l
}
KR=("$KURA" --config "$DIR/kura.toml" restore backup "$LAST" "$LASTF")
d=(); s=(); k=(); r=(); b=(); f=()
for i in $(seq "$RUNS"); do
  start_kura "$KURA" "$DIR"
  d+=("$(timed "${KR[@]}" --to "$DIR/out")")            # the daemon writes the files
  cmp "$DIR/out/$LASTF" "$DIR/gen/$LASTF"
  s+=("$(timed "${KR[@]}" --stream --to "$DIR/out")")   # the CLI writes from the daemon's tar
  kill -TERM $KPID; wait $KPID || true
  # The runs without a daemon take turns at going first: on a VM whose host takes back
  # free memory, the run after one that freed much (restic's exit, the daemon's) pays
  # for fresh pages, up to 2 s of system time more per GB written.
  for j in 0 1 2 3; do
    case $(( (i + j) % 4 )) in
      0) k+=("$(timed "${KR[@]}" --to "$DIR/out")")     # no daemon: the CLI holds the store
         cmp "$DIR/out/$LASTF" "$DIR/gen/$LASTF" ;;
      1) r+=("$(timed restic restore -q latest --target "$DIR/out")") ;;
      2) if [ -n "$BASE" ]; then
           b+=("$(timed "$BASE" --config "$DIR/base.toml" restore backup "$LAST" "$LASTF" --to "$DIR/out")")
           cmp "$DIR/out/$LASTF" "$DIR/gen/$LASTF"
         fi ;;
      3) f+=("$(timed "$KURA" --config "$DIR/fresh.toml" restore backup "$LAST" "$LASTF" --to "$DIR/out")")
         cmp "$DIR/out/$LASTF" "$DIR/gen/$LASTF" ;;
    esac
  done
done
python3 - "$PART" "$BYTES" "${d[*]}" "${s[*]}" "${k[*]}" "${r[*]}" "${b[*]}" "${f[*]}" <<'PY'
import statistics, sys
part, size = sys.argv[1], int(sys.argv[2])
runs = [[float(x) for x in a.split()] for a in sys.argv[3:9]]
names = ["kura restore, daemon serving", "kura restore --stream (tar)", "kura restore, no daemon", "restic restore", "baseline kura, no daemon", "kura, no daemon, before GC"]
mr = statistics.median(runs[3])
print(f"{part}: newest generation {size/1e6:.0f} MB, cold cache, median of {len(runs[3])}")
for n, v in zip(names, runs):
    if not v:
        continue
    m = statistics.median(v)
    print(f"{n:30} {m:6.0f} MB/s  ({', '.join(f'{x:.0f}' for x in v)})  {m/mr:.2f}x restic")
PY
