#!/usr/bin/env bash
# Regenerates the console's pictures in docs/img/ from the browser test: it drives the
# real daemon in headless Chromium and saves every page under
# target/console-screenshots/; the dashboard and a volume page are copied to docs/.
# Needs what scripts/test.sh installs (chromium, chromium-driver, selenium).
set -euo pipefail
cd "$(dirname "$0")/.."
export KURA_PYTHON=${KURA_PYTHON:-$PWD/target/test-venv/bin/python}
cargo test --release -q -p kura --test console console_in_a_real_browser
mkdir -p docs/img
cp target/console-screenshots/dashboard.png docs/img/console-dashboard.png
cp target/console-screenshots/volume.png docs/img/console-volume.png
ls -l docs/img/console-*.png
