#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests run (a real Prometheus to cross-check
# skein's PromQL; Alertmanager, which receives skein's alerts, and promtool, which checks the
# shipped rules; headless Chromium and its WebDriver for the web UI tests; strace, which records the
# collector's file-system calls for the fsync-order test), only when missing:
# a second run does nothing.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${missing[*]}; installing needs root: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v prometheus >/dev/null
command -v chromium >/dev/null
command -v chromedriver >/dev/null
command -v strace >/dev/null
test -x /usr/bin/prometheus-alertmanager
