#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests run (a real Prometheus to cross-check
# skein's PromQL; Alertmanager, which receives skein's alerts, and promtool, which checks the
# shipped rules), only when missing: a second run does nothing.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && [ -x /usr/bin/prometheus-alertmanager ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus or prometheus-alertmanager is missing and installing them needs root: apt-get install -y prometheus prometheus-alertmanager" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
command -v prometheus >/dev/null
test -x /usr/bin/prometheus-alertmanager
