#!/usr/bin/env bash
# Create (if missing) and update <repo>/.venv-bench with chdb for `skein-bench query`'s
# ClickHouse peer. Idempotent: pip runs only when bench/requirements.txt changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SKEIN_VENV="${SKEIN_VENV:-$here/../.venv-bench}" REQUIREMENTS="$here/requirements.txt" \
    exec "$here/../tests/setup-venv.sh"
