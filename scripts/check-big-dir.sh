#!/usr/bin/env bash
# Lists a directory of N entries (default 100,000) through the export with both real
# clients and checks every name comes back exactly once: READDIRPLUS paging on a
# directory much larger than the test suite's 10,500. Takes a few minutes; not run by CI.
#   scripts/check-big-dir.sh [N]      (after scripts/test.sh has installed the clients)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
PY=${KURA_PYTHON:-$PWD/target/test-venv/bin/python}
cargo build --release -p kura -q
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/kura.toml" <<CONF
data_dir = "$DIR/store"
[[export]]
listen = "127.0.0.1:$PORT"
allow = ["127.0.0.1/32"]
CONF
target/release/kura --config "$DIR/kura.toml" serve > "$DIR/out" 2> "$DIR/log" &
KPID=$!
trap 'kill $KPID 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 1
URL="nfs://127.0.0.1/backup?version=3&nfsport=$PORT&mountport=$PORT"
t0=$(date +%s)
"$PY" - "$URL" "$N" <<'PYEOF'
import sys, nfs_rs
c = nfs_rs.Client.connect(sys.argv[1], noresvport=True)
n = int(sys.argv[2])
c.mkdir('/big')
for i in range(n):
    with c.open(f'/big/entry-{i:07d}', 'wb'):
        pass
names = c.listdir('/big')
assert len(names) == n and len(set(names)) == n, (len(names), len(set(names)))
print(f'nfs-rs listed {len(names)} entries, all distinct')
PYEOF
t1=$(date +%s)
count=$(nfs-ls "nfs://127.0.0.1/backup/big?version=3&nfsport=$PORT&mountport=$PORT" | grep -c 'entry-')
distinct=$(nfs-ls "nfs://127.0.0.1/backup/big?version=3&nfsport=$PORT&mountport=$PORT" | awk '{print $NF}' | grep 'entry-' | sort -u | wc -l)
t2=$(date +%s)
echo "nfs-ls listed $count entries, $distinct distinct"
echo "create+list: $((t1 - t0)) s, two nfs-ls listings: $((t2 - t1)) s"
[ "$count" -eq "$N" ] && [ "$distinct" -eq "$N" ]
