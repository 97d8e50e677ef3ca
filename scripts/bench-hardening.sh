#!/usr/bin/env bash
# What the hardening costs and buys, side by side with another kura binary:
# - GETATTR/s on one connection (64 and 128 in flight), RUNS turns each, alternating;
# - peak RSS under the READDIRPLUS abuse (4 connections x 64 calls asking for 4 GiB
#   replies of a 20,000-entry directory, never reading them).
#   KURA_BASELINE=/path/to/old/kura scripts/bench-hardening.sh [RUNS]
# Needs PyPI's nfs-rs (scripts/test.sh installs it into target/test-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BASE=${KURA_BASELINE:?set KURA_BASELINE to the kura binary to compare with}
PY=${KURA_PYTHON:-$PWD/target/test-venv/bin/python}
cargo build --release -q -p kura -p kura-protocol --examples
NEW=$PWD/target/release/kura
LOAD=$PWD/target/release/examples/getattr_load
W=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$W"' EXIT

start() { # name binary port
  mkdir -p "$W/$1"
  printf 'data_dir = "%s/%s/store"\n[[export]]\nlisten = "127.0.0.1:%s"\n' "$W" "$1" "$3" > "$W/$1/kura.toml"
  KURA_LOG=warn "$2" --config "$W/$1/kura.toml" serve > "$W/$1/log" 2>&1 &
  pids+=($!)
  echo $! > "$W/$1/pid"
  for _ in $(seq 100); do grep -q listening "$W/$1/log" 2>/dev/null && break; sleep 0.1; done
}
fill() { # port
  "$PY" - "$1" <<'PY'
import nfs_rs, sys
p = sys.argv[1]
c = nfs_rs.Client.connect(f'nfs://127.0.0.1/backup?version=3&nfsport={p}&mountport={p}', uid=0, gid=0, noresvport=True)
c.mkdir('/big')
for i in range(20000):
    c.touch(f'/big/entry-with-a-name-of-some-length-{i:06}')
PY
}

start new "$NEW" 24049
start base "$BASE" 24050
fill 24049 & f1=$!
fill 24050 & f2=$!
wait $f1 $f2
echo "filled two 20,000-entry directories"

for window in 1 64 128; do
  for turn in $(seq "$RUNS"); do
    for who in new base; do
      port=$([ $who = new ] && echo 24049 || echo 24050)
      r=$("$LOAD" "$port" 3 "$window" 2>/dev/null | grep -o '= [0-9]*/s' | tr -dc 0-9)
      echo "getattr window=$window turn=$turn $who $r"
    done
  done
done | tee "$W/getattr"
for who in new base; do
  for window in 1 64 128; do
    med=$(awk -v w="window=$window" -v who="$who" '$2 == w && $4 == who { print $5 }' "$W/getattr" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    echo "GETATTR median $who window $window: $med/s"
  done
done
for who in new base; do
  port=$([ $who = new ] && echo 24049 || echo 24050)
  echo -n "$who: "
  "$LOAD" "$port" 0 1 /backup readdirplus big "$(cat "$W/$who/pid")" 4 64 2>/dev/null | tail -1
done
