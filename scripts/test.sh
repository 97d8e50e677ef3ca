#!/usr/bin/env bash
# Runs every kura test on a fresh Debian machine, installing what the tests need:
# Debian's libnfs-utils (nfs-cp, nfs-ls, nfs-cat), chromium and chromium-driver (the
# console's browser tests), PyPI's nfs-rs and selenium in a venv, and Garage
# (a real S3 engine for the DR tests), built once by `cargo install` into ~/.cache/kura
# (about 18 minutes on 2 cores the first time, nothing afterwards).
# Tests that mount a tmpfs need root; set KURA_SKIP_MOUNT_TESTS=1 where that is impossible.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if ! command -v nfs-cp >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing libnfs-utils, chromium and chromium-driver" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libnfs-utils chromium chromium-driver >/dev/null
fi

VENV=${KURA_VENV:-$PWD/target/test-venv}
if ! "$VENV/bin/python" -c 'import nfs_rs, selenium' 2>/dev/null; then
  echo "installing nfs-rs and selenium into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'nfs-rs==0.8.7' 'selenium==4.51.0'
fi
export KURA_PYTHON="$VENV/bin/python"

scripts/garage.sh bin >/dev/null
export KURA_REQUIRE_GARAGE=1

# Release mode: the NFS tests move gigabytes. No doc tests (there are none), so that
# cargo's last summary is a real one; a total follows.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$rc"
