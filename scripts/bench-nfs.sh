#!/usr/bin/env bash
# NFS benchmark: kura against nfs-ganesha (VFS FSAL) serving a plain directory, measured
# side by side with the same client (libnfs-utils nfs-cp), 1 GiB in and out, median of
# RUNS (default 5). Both servers run inside a private network namespace (unshare -n,
# loopback only). Needs root; installs nfs-ganesha, nfs-ganesha-vfs, rpcbind,
# libnfs-utils when missing.
#   scripts/bench-nfs.sh [RUNS]     env: BENCH_DIR (default $TMPDIR/kura-nfs-bench), SIZE_MIB,
#   KURA_BASELINE (another kura binary, e.g. an earlier commit's, measured alongside),
#   PAR_MIB (default 256; 0 skips the parallel case), SMALL_FILES (default 3000; 0 skips
#   the small-file case), SIZE_MIB=0 skips the 1 GiB case
# Then four readers at once: each server gets four PAR_MIB files (kura's ingested
# before they are read), read once to warm caches, then read by four nfs-cp at once,
# RUNS times: aggregate MB/s and, for kura, the daemon's CPU use beside it; and one
# reader of one of those files alone (a single stream of an ingested file).
# Then small files (scripts/bench-small.py, nfs-rs from target/test-venv): SMALL_FILES
# files of 4 KiB created one after another (open, write, close) by one client, then by
# four clients at once; files/s, median of RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SIZE_MIB=${SIZE_MIB:-1024}
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/kura-nfs-bench}

if [ "${KURA_IN_NETNS:-}" != 1 ]; then
  missing=()
  for p in nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
  cargo build --release -p kura -q
  rm -rf "$DIR"; mkdir -p "$DIR"
  # ext4 without a journal scans every inode deleted in the last 30 s at each inode
  # allocation: right after removing a previous run's trees, nfs-ganesha (one inode
  # per file) would create files slower than it does. Let that window pass.
  if [ "${SMALL_FILES:-3000}" -gt 0 ]; then sleep 31; fi
  # A private network and mount namespace: loopback only, a private /run for rpcbind.
  exec unshare -n -m env KURA_IN_NETNS=1 "$0" "$RUNS"
fi

ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind /run/ganesha /run/io
# The client's own file lives in memory, so that only the servers touch the disk.
IO=/run/io
[ "$SIZE_MIB" -gt 0 ] && head -c $((SIZE_MIB << 20)) /dev/urandom > "$IO/input.bin"
rpcbind -w
KURA=$PWD/target/release/kura
mkdir -p "$DIR/gexport"
cat > "$DIR/ganesha.conf" <<CONF
NFS_CORE_PARAM { Protocols = 3; NFS_Port = 12049; MNT_Port = 12050; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; }
EXPORT {
  Export_Id = 1; Path = $DIR/gexport; Pseudo = /gexport; Protocols = 3; Transports = TCP;
  Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
  FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
CONF
ganesha.nfsd -F -L "$DIR/ganesha.log" -f "$DIR/ganesha.conf" -p "$DIR/ganesha.pid" &
GPID=$!
"$KURA" --data "$DIR/kstore" serve --listen 127.0.0.1:12051 --api 127.0.0.1:12052 > "$DIR/kura.out" 2> "$DIR/kura.log" &
KPID=$!
SERVERS="kura ganesha"
BPID=
if [ -n "${KURA_BASELINE:-}" ]; then
  "$KURA_BASELINE" --data "$DIR/kstore-base" serve --listen 127.0.0.1:12053 --api 127.0.0.1:12054 > "$DIR/kura-base.out" 2> "$DIR/kura-base.log" &
  BPID=$!
  SERVERS="kura kura-base ganesha"
fi
trap 'kill $GPID $KPID $BPID 2>/dev/null; wait 2>/dev/null' EXIT
sleep 3

url() { echo "nfs://127.0.0.1$2?nfsport=$1&mountport=${3:-$1}&version=3"; }
now() { date +%s.%N; }
mbs() { echo "$SIZE_MIB $1 $2" | awk '{ printf "%.0f", $1 * 1.048576 / ($3 - $2) }'; }
declare -A W R
# Each turn starts on a quiet machine: dirty pages written back and the previous kura
# turn's background ingest (5 s after its last write) finished; otherwise whoever goes
# first in a round reads while the round before is still being written back. The order
# also rotates from run to run.
SETTLE=${SETTLE:-8}
read -r -a ORDER <<< "$SERVERS"
BIG_RUNS=$RUNS
[ "$SIZE_MIB" -gt 0 ] || BIG_RUNS=0
for ((i = 1; i <= BIG_RUNS; i++)); do
  n=${#ORDER[@]}
  for ((k = 0; k < n; k++)); do
    srv=${ORDER[$(( (k + i) % n ))]}
    sync; sleep "$SETTLE"
    case $srv in
      kura) port=12051; mport=12051; path=/backup/f$i ;;
      kura-base) port=12053; mport=12053; path=/backup/f$i ;;
      ganesha) port=12049; mport=12050; path=$DIR/gexport/f$i ;;
    esac
    t0=$(now); nfs-cp "$IO/input.bin" "$(url $port $path $mport)" >/dev/null; t1=$(now)
    nfs-cp "$(url $port $path $mport)" "$IO/out.bin" >/dev/null; t2=$(now)
    cmp -s "$IO/input.bin" "$IO/out.bin" || { echo "$srv: read back differs" >&2; exit 1; }
    rm -f "$IO/out.bin"
    W[$srv]+="$(mbs "$t0" "$t1") "; R[$srv]+="$(mbs "$t1" "$t2") "
  done
done
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
[ "$BIG_RUNS" -gt 0 ] && echo "nfs-cp ${SIZE_MIB} MiB, $RUNS runs, MB/s (median; all runs)"
for srv in $SERVERS; do
  [ "$BIG_RUNS" -gt 0 ] || break
  printf "%-10s write %5s  (%s)  read %5s  (%s)\n" "$srv" "$(echo "${W[$srv]}" | med)" "${W[$srv]}" "$(echo "${R[$srv]}" | med)" "${R[$srv]}"
done
echo "kura: allow-list 127.0.0.1/32 (the default export)"

SMALL_FILES=${SMALL_FILES:-3000}
if [ "$SMALL_FILES" -gt 0 ]; then
  small=()
  for srv in $SERVERS; do
    case $srv in
      kura) small+=("kura=$(url 12051 /backup)") ;;
      kura-base) small+=("kura-base=$(url 12053 /backup)") ;;
      ganesha) small+=("ganesha=$(url 12049 "$DIR/gexport" 12050)") ;;
    esac
  done
  "${KURA_PYTHON:-$PWD/target/test-venv/bin/python}" scripts/bench-small.py "$SMALL_FILES" "$RUNS" "${small[@]}"
fi

PAR_MIB=${PAR_MIB:-256}
[ "$PAR_MIB" -gt 0 ] || exit 0
for k in 1 2 3 4; do head -c $((PAR_MIB << 20)) /dev/urandom > "$IO/par$k.bin"; done
pid_of() { case $1 in kura) echo $KPID ;; kura-base) echo $BPID ;; ganesha) echo $GPID ;; esac; }
where() { # server, file number -> url
  case $1 in
    kura) url 12051 /backup/par$2 ;;
    kura-base) url 12053 /backup/par$2 ;;
    ganesha) url 12049 "$DIR/gexport/par$2" 12050 ;;
  esac
}
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for srv in $SERVERS; do
  for k in 1 2 3 4; do nfs-cp "$IO/par$k.bin" "$(where $srv $k)" >/dev/null; done
done
# kura ingests a file 5 s after its last write; wait for both kuras' landing zones.
for _ in $(seq 120); do
  [ -z "$(ls -A "$DIR/kstore/staging" 2>/dev/null)" ] && [ -z "$(ls -A "$DIR/kstore-base/staging" 2>/dev/null)" ] && break
  sleep 1
done
declare -A P C S
for ((i = 0; i <= RUNS; i++)); do
  for srv in $SERVERS; do
    sync; sleep 2
    pid=$(pid_of $srv); c0=$(cpu $pid); t0=$(now)
    readers=()
    for k in 1 2 3 4; do nfs-cp "$(where $srv $k)" "$IO/pout$k.bin" >/dev/null & readers+=($!); done
    wait "${readers[@]}"
    t1=$(now); c1=$(cpu $pid)
    for k in 1 2 3 4; do cmp -s "$IO/par$k.bin" "$IO/pout$k.bin" || { echo "$srv: parallel read differs" >&2; exit 1; }; rm -f "$IO/pout$k.bin"; done
    sync; sleep 1
    t2=$(now); nfs-cp "$(where $srv 1)" "$IO/pout1.bin" >/dev/null; t3=$(now)
    cmp -s "$IO/par1.bin" "$IO/pout1.bin" || { echo "$srv: single read differs" >&2; exit 1; }
    rm -f "$IO/pout1.bin"
    # Turn 0 warms the caches and is not counted.
    [ "$i" -eq 0 ] && continue
    P[$srv]+="$(echo "$((4 * PAR_MIB)) $t0 $t1" | awk '{ printf "%.0f", $1 * 1.048576 / ($3 - $2) }') "
    C[$srv]+="$(echo "$t0 $t1 $c0 $c1" | awk '{ printf "%.0f", ($4 - $3) / ($2 - $1) }') "
    S[$srv]+="$(echo "$PAR_MIB $t2 $t3" | awk '{ printf "%.0f", $1 * 1.048576 / ($3 - $2) }') "
  done
done
echo "four readers at once, ${PAR_MIB} MiB each, $RUNS runs: aggregate MB/s (median; all runs), server CPU % of one core"
for srv in $SERVERS; do
  printf "%-10s read %5s  (%s)  cpu %4s%%  (%s)\n" "$srv" "$(echo "${P[$srv]}" | med)" "${P[$srv]}" "$(echo "${C[$srv]}" | med)" "${C[$srv]}"
done
echo "one reader of an ingested ${PAR_MIB} MiB file, $RUNS runs: MB/s (median; all runs)"
for srv in $SERVERS; do
  printf "%-10s read %5s  (%s)\n" "$srv" "$(echo "${S[$srv]}" | med)" "${S[$srv]}"
done
