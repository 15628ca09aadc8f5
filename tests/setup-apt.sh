#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests run (a real Prometheus to cross-check
# skein's PromQL), only when missing: a second run does nothing.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus is missing and installing it needs root: apt-get install -y prometheus" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null
