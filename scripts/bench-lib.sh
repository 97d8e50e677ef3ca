# Shared by the bench-*.sh scripts (sourced): a kura daemon on loopback ports.
# start_kura BIN DIR: writes DIR/kura.toml (store DIR/store, volume backup, an NFS port,
# an ephemeral API port), starts BIN serve in the background and waits until its API
# listens. Sets PORT (NFS), API (http://...), KPID.
start_kura() {
  local bin=$1 dir=$2
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$dir/kura.toml" <<CONF
data_dir = "$dir/store"
volumes = ["backup"]
[api]
listen = "127.0.0.1:0"
[[export]]
listen = "127.0.0.1:$PORT"
CONF
  "$bin" --config "$dir/kura.toml" serve > "$dir/kura.out" 2> "$dir/kura.log" &
  KPID=$!
  for _ in $(seq 100); do grep -q '^api ' "$dir/kura.out" 2>/dev/null && break; sleep 0.1; done
  API=$(sed -n 's/^api //p' "$dir/kura.out")
  [ -n "$API" ] || { echo "kura did not start; see $dir/kura.log" >&2; return 1; }
}
