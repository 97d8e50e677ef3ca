#!/usr/bin/env bash
# The console's benchmark: server time and page weight with 20 volumes x 1,000
# snapshots each. Makes the store once under target/bench-console (kept for reruns:
# about 5 minutes on 2 cores to make), then measures each page ROUNDS times.
#   scripts/bench-console.sh [ROUNDS] [VOLUMES] [SNAPSHOTS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-21}
VOLUMES=${2:-20}
SNAPSHOTS=${3:-1000}
cargo build --release -q -p kura
dir=$PWD/target/bench-console
mkdir -p "$dir"
vols=$(seq -f 'vol%02g' 0 $((VOLUMES - 1)) | sed 's/.*/"&"/' | paste -sd, -)
cat > "$dir/kura.toml" <<TOML
data_dir = "$dir/store"
volumes = [$vols]

[api]
listen = "127.0.0.1:0"

[[export]]
listen = "127.0.0.1:0"
allow = ["127.0.0.1/32"]
TOML
target/release/kura serve --config "$dir/kura.toml" > "$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '^api ' "$dir/log" 2>/dev/null && break
  sleep 0.2
done
api=$(sed -n 's/^api //p' "$dir/log")
python3 scripts/bench-console.py "$api" "$VOLUMES" "$SNAPSHOTS" "$ROUNDS" "$(cat "$dir/store/api-token")"
