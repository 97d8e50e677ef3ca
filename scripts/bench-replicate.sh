#!/usr/bin/env bash
# DR copies: replication of the dumps corpus (shared/bench/make-corpus.sh dumps) to a
# directory and to a 3-node Garage cluster, the first copy (night 1) and the next one
# (night 2), against `rclone sync` of the same store directory to the same bucket; then
# restore of night 2 from Garage against the local store (page cache dropped first).
#
#   scripts/bench-replicate.sh [RUNS]      (root, for drop_caches; default 3 runs)
#
# Needs: the corpus in $CORPUS (default /tmp/kura-corpus), rclone (apt), Garage
# (scripts/garage.sh bin). Prints each run and the medians; every copy goes to a new
# directory or prefix, so that each first copy is a first copy.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
CORPUS=${CORPUS:-/tmp/kura-corpus}
W=$(mktemp -d /tmp/kura-bench-repl.XXXXXX)
K=$PWD/target/release/kura
cargo build --release -q -p kura
command -v rclone >/dev/null || { echo "apt-get install rclone" >&2; exit 2; }
scripts/garage.sh start "$W/garage" >/dev/null
trap 'scripts/garage.sh stop "$W/garage"; rm -rf "$W"' EXIT
# shellcheck disable=SC1091
source "$W/garage/env"
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT=$AWS_ENDPOINT_URL \
  RCLONE_CONFIG_G_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
  RCLONE_CONFIG_G_REGION=garage RCLONE_CONFIG_G_FORCE_PATH_STYLE=true
export KURA_LOG=warn

secs() { python3 -c "import time; print(time.time())"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
dusum() { du -sb "$1" | cut -f1; }

results=$W/results
: > "$results"
for run in $(seq 1 "$RUNS"); do
  S=$W/r$run
  mkdir -p "$S/src"
  cat > "$S/kura.toml" <<CONF
data_dir = "$S/store"
volumes = ["backup"]
[api]
listen = "127.0.0.1:0"
[target.dir]
path = "$S/dr"
[target.g]
[target.g.s3]
endpoint = "$AWS_ENDPOINT_URL"
region = "garage"
bucket = "kura"
prefix = "run$run"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
CONF
  k() { "$K" --config "$S/kura.toml" "$@"; }
  ln "$CORPUS/dumps/night1.sql" "$S/src/dump.sql"
  k import "$S/src" backup --snapshot n1 >/dev/null
  store1=$(dusum "$S/store/packs")
  for t in dir g; do
    cold; t0=$(secs)
    sent=$(k replicate backup --to $t --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["report"]["bytes_sent"])')
    t1=$(secs)
    echo "run $run first $t seconds $(python3 -c "print(round($t1-$t0,2))") bytes $sent logical 1021991292" | tee -a "$results"
  done
  cold; t0=$(secs)
  env -u AWS_CA_BUNDLE rclone sync "$S/store" "g:kura/rclone$run" 2>/dev/null
  t1=$(secs)
  echo "run $run first rclone seconds $(python3 -c "print(round($t1-$t0,2))") bytes $(dusum "$S/store") logical 1021991292" | tee -a "$results"

  rm "$S/src/dump.sql"; ln "$CORPUS/dumps/night2.sql" "$S/src/dump.sql"
  k import "$S/src" backup --replace --snapshot n2 >/dev/null
  store2=$(dusum "$S/store/packs")
  for t in dir g; do
    cold; t0=$(secs)
    sent=$(k replicate backup --to $t --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["report"]["bytes_sent"])')
    t1=$(secs)
    echo "run $run next $t seconds $(python3 -c "print(round($t1-$t0,2))") bytes $sent changed $((store2 - store1))" | tee -a "$results"
  done
  cold; t0=$(secs)
  # Bytes rclone sent: the files it logs as copied, sized in the store.
  rclone_out=$(env -u AWS_CA_BUNDLE rclone sync -v "$S/store" "g:kura/rclone$run" 2>&1 |
    sed -n 's/.*INFO  : \(.*\): Copied .*/\1/p' | (cd "$S/store" && xargs -r -d '\n' du -cb | tail -1 | cut -f1))
  t1=$(secs)
  echo "run $run next rclone seconds $(python3 -c "print(round($t1-$t0,2))") bytes ${rclone_out:-?} changed $((store2 - store1))" | tee -a "$results"

  for from in local g; do
    rm -rf "$S/out"; cold; t0=$(secs)
    if [ $from = local ]; then k restore backup n2 --to "$S/out" 2>/dev/null
    else k restore backup n2 --from g --to "$S/out" 2>/dev/null; fi
    t1=$(secs)
    cmp -s "$S/out/dump.sql" "$CORPUS/dumps/night2.sql" || { echo "restore from $from differs" >&2; exit 1; }
    echo "run $run restore $from seconds $(python3 -c "print(round($t1-$t0,2))") bytes 1022687288" | tee -a "$results"
  done
  rm -rf "$S"
done

python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
extra = {}
for line in open(sys.argv[1]):
    f = line.split()
    key = (f[2], f[3])
    secs = float(f[5])
    rows[key].append(secs)
    extra[key] = f[6:]
print("\nmedians over", max(len(v) for v in rows.values()), "runs:")
for (phase, what), v in rows.items():
    m = statistics.median(v)
    e = extra[(phase, what)]
    b = e[1]
    try:
        mbs = float(b) / m / 1e6
        rate = f"{mbs:7.1f} MB/s sent"
    except ValueError:
        rate = ""
    logical = float(e[3]) if len(e) > 3 and e[2] == "logical" else None
    lr = f"{logical / m / 1e6:7.1f} MB/s of dump" if logical else ""
    print(f"{phase:8} {what:7} {m:7.2f} s  bytes {b:>12} {' '.join(e[2:])}  {rate} {lr}")
PY
