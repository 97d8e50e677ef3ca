#!/usr/bin/env bash
# NFS benchmark: kura against nfs-ganesha (VFS FSAL) serving a plain directory, measured
# side by side with the same client (libnfs-utils nfs-cp), 1 GiB in and out, median of
# RUNS (default 5). Both servers run inside a private network namespace (unshare -n,
# loopback only). Needs root; installs nfs-ganesha, nfs-ganesha-vfs, rpcbind,
# libnfs-utils when missing.
#   scripts/bench-nfs.sh [RUNS]     env: BENCH_DIR (default $TMPDIR/kura-nfs-bench), SIZE_MIB
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
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$DIR/input.bin"
  # A private network and mount namespace: loopback only, a private /run for rpcbind.
  exec unshare -n -m env KURA_IN_NETNS=1 "$0" "$RUNS"
fi

ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind /run/ganesha
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
"$KURA" --data "$DIR/kstore" serve --listen 127.0.0.1:12051 > "$DIR/kura.out" 2> "$DIR/kura.log" &
KPID=$!
"$KURA" --data "$DIR/kstore-open" serve --listen 127.0.0.1:12052 --allow 0.0.0.0/0 > "$DIR/kura-open.out" 2> "$DIR/kura-open.log" &
KOPID=$!
trap 'kill $GPID $KPID $KOPID 2>/dev/null; wait 2>/dev/null' EXIT
sleep 3

url() { echo "nfs://127.0.0.1$2?nfsport=$1&mountport=${3:-$1}&version=3"; }
now() { date +%s.%N; }
mbs() { echo "$SIZE_MIB $1 $2" | awk '{ printf "%.0f", $1 * 1.048576 / ($3 - $2) }'; }
declare -A W R
for ((i = 1; i <= RUNS; i++)); do
  for srv in kura kura-open ganesha; do
    case $srv in
      kura) port=12051; mport=12051; path=/backup/f$i ;;
      kura-open) port=12052; mport=12052; path=/backup/f$i ;;
      ganesha) port=12049; mport=12050; path=$DIR/gexport/f$i ;;
    esac
    t0=$(now); nfs-cp "$DIR/input.bin" "$(url $port $path $mport)" >/dev/null; t1=$(now)
    nfs-cp "$(url $port $path $mport)" "$DIR/out.bin" >/dev/null; t2=$(now)
    cmp -s "$DIR/input.bin" "$DIR/out.bin" || { echo "$srv: read back differs" >&2; exit 1; }
    rm -f "$DIR/out.bin"
    W[$srv]+="$(mbs "$t0" "$t1") "; R[$srv]+="$(mbs "$t1" "$t2") "
  done
done
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "nfs-cp ${SIZE_MIB} MiB, $RUNS runs, MB/s (median; all runs)"
for srv in kura kura-open ganesha; do
  printf "%-10s write %5s  (%s)  read %5s  (%s)\n" "$srv" "$(echo "${W[$srv]}" | med)" "${W[$srv]}" "$(echo "${R[$srv]}" | med)" "${R[$srv]}"
done
echo "kura: allow-list 127.0.0.1/32 (socket filter); kura-open: allow 0.0.0.0/0"
