#!/usr/bin/env bash
# Create (if missing) and update the end-to-end test virtualenv at <repo>/.venv.
# Idempotent: pip runs only when tests/requirements.txt (or $REQUIREMENTS) changed since the last
# install.
# Usage: bash tests/setup-venv.sh && .venv/bin/pytest tests/e2e -q
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${SKEIN_VENV:-$root/.venv}"
req="${REQUIREMENTS:-$here/requirements.txt}"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-venv: creating $venv" >&2
    "$python" -m venv "$venv"
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "setup-venv: installing $req" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$stamp"
fi
