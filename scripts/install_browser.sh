#!/usr/bin/env bash
# Install what the page tests need (tests/test_pages.py, tests/test_grafana.py):
# - Debian's `chromium` (headless, driven by Playwright for Python with executable_path: Playwright
#   cannot download its own browser builds here). About 75 s with `apt-get update` on 2 cores,
#   ~115 packages.
# - `promtool` (checks deploy/prometheus/*.rules.yaml) into .state/bin/, taken from Debian's
#   `prometheus` package without installing it (no service, no web assets): `apt-get download`
#   and `dpkg-deb` extract the one binary, ~7 s. (`go install .../cmd/promtool` would build
#   the whole Prometheus module tree.)
# Idempotent: what is present and runs is left alone. Needs root (or sudo) for apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${ROOT}/.state/bin"
mkdir -p "${BIN}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "install_browser: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

updated=""
apt_update() {
  if [ -z "${updated}" ]; then ${SUDO} apt-get update -qq; updated=1; fi
}

if chromium --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
  :
else
  log "apt-get install chromium (about 75 s)"
  apt_update
  ${SUDO} apt-get install -y -q chromium >/dev/null
  chromium --version >&2
fi

if ! "${BIN}/promtool" --version >/dev/null 2>&1; then
  log "promtool from Debian's prometheus package (apt-get download, not installed)"
  apt_update
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' EXIT
  (cd "${tmp}" && apt-get download -q -o APT::Sandbox::User=root prometheus >/dev/null)
  dpkg-deb --fsys-tarfile "${tmp}"/prometheus_*.deb | tar -x -C "${tmp}" ./usr/bin/promtool
  install -m 0755 "${tmp}/usr/bin/promtool" "${BIN}/promtool"
  "${BIN}/promtool" --version 2>&1 | head -1 >&2
fi
