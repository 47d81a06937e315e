#!/usr/bin/env bash
# The soak of issue 12 (see tools/soak.py): builds the binary with fail points (for the injected
# panics) into target/fail-points and streams RECORDS (default 10^7) through configs/digits-mlp.yaml.
# Usage: bash tools/soak.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/fail-points}
cargo build --release --quiet --features fail-points
exec python3 tools/soak.py "$CARGO_TARGET_DIR/release/subpass" "${1:-10000000}"
