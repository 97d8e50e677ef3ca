#!/usr/bin/env bash
# Garage, a real S3 engine, for kura's DR tests and benchmarks.
#
#   scripts/garage.sh bin            path of the garage binary, built once and cached
#                                    (cargo install; ~18 min on 2 cores the first time)
#   scripts/garage.sh start DIR      a 3-node cluster on 127.0.0.1, replication factor 3,
#                                    with a key and a bucket `kura`; writes DIR/env
#                                    (AWS_* variables, GARAGE_NODES) and DIR/nodeN.pid
#   scripts/garage.sh stop DIR       stops the cluster
#
# The cache is $KURA_CACHE (default ~/.cache/kura), outside the work tree, so that CI
# runs on a fresh clone reuse it.
set -euo pipefail
VERSION=2.5.0
CACHE=${KURA_CACHE:-$HOME/.cache/kura}
ROOT=$CACHE/garage-$VERSION
BIN=$ROOT/bin/garage

build() {
    if [ ! -x "$BIN" ]; then
        echo "building garage $VERSION into $ROOT (once; ~18 min on 2 cores)" >&2
        cargo install --locked garage --version "$VERSION" \
            --no-default-features --features bundled-libs,lmdb --root "$ROOT" >&2
    fi
    echo "$BIN"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    build >/dev/null
    mkdir -p "$dir"
    local secret
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    local nodes=()
    for i in 1 2 3; do
        local rpc s3 admin
        rpc=$(free_port); s3=$(free_port); admin=$(free_port)
        mkdir -p "$dir/n$i/meta" "$dir/n$i/data"
        cat >"$dir/n$i.toml" <<TOML
metadata_dir = "$dir/n$i/meta"
data_dir = "$dir/n$i/data"
db_engine = "lmdb"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
        chmod 600 "$dir/n$i.toml"
        "$BIN" -c "$dir/n$i.toml" server >"$dir/n$i.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
        echo "$s3" >"$dir/n$i.s3port"
        nodes+=("$rpc")
    done
    local g="$BIN -c $dir/n1.toml"
    # Wait for the first node's RPC, then connect the others to it.
    for _ in $(seq 1 100); do $g status >/dev/null 2>&1 && break; sleep 0.2; done
    for i in 2 3; do
        local id
        for _ in $(seq 1 100); do
            id=$("$BIN" -c "$dir/n$i.toml" node id -q 2>/dev/null) && break
            sleep 0.2
        done
        $g node connect "$id" >/dev/null
    done
    for i in 1 2 3; do
        local id
        id=$("$BIN" -c "$dir/n$i.toml" node id -q 2>/dev/null | cut -d@ -f1)
        $g layout assign -z dc$i -c 1G "$id" >/dev/null
    done
    $g layout apply --version 1 >/dev/null
    for _ in $(seq 1 100); do $g bucket create kura >/dev/null 2>&1 && break; sleep 0.3; done
    local keyinfo
    keyinfo=$($g key create kura-key 2>&1)
    local kid ksec
    kid=$(echo "$keyinfo" | awk '/Key ID/ {print $NF}')
    ksec=$(echo "$keyinfo" | awk '/Secret key/ {print $NF}')
    $g bucket allow --read --write --owner kura --key kura-key >/dev/null
    cat >"$dir/env" <<ENV
export AWS_ACCESS_KEY_ID=$kid
export AWS_SECRET_ACCESS_KEY=$ksec
export AWS_REGION=garage
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/n1.s3port")
export GARAGE_ENDPOINTS="http://127.0.0.1:$(cat "$dir/n1.s3port") http://127.0.0.1:$(cat "$dir/n2.s3port") http://127.0.0.1:$(cat "$dir/n3.s3port")"
ENV
    echo "$dir/env"
}

stop() {
    local dir=$1
    for i in 1 2 3; do
        [ -f "$dir/node$i.pid" ] && kill "$(cat "$dir/node$i.pid")" 2>/dev/null || true
    done
}

case "${1:-}" in
    bin) build ;;
    start) start "${2:?DIR}" ;;
    stop) stop "${2:?DIR}" ;;
    *) echo "usage: $0 bin | start DIR | stop DIR" >&2; exit 2 ;;
esac
