#!/usr/bin/env bash
# Install the local stack binaries (MinIO, FerretDB v1.24.2) and the kustomize the manifest
# tests render with into .state/bin/ if missing.
# Needs only Go. Idempotent: a binary that is present and runs is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${ROOT}/.state/bin"
FERRETDB_VERSION="v1.24.2"
# v5.8.1 needs go >= 1.24; v5.8.3 needs go 1.27 (newer than the machines' go 1.26).
KUSTOMIZE_VERSION="v5.8.1"
mkdir -p "${BIN}"
export GOBIN="${BIN}"

log() { echo "install_services: $*" >&2; }

# A binary counts as installed only if `--version` runs (an old ferretdb build without
# build/version/version.txt panics at start).
works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

# Reuse a binary someone already built (saves a few minutes) when it works.
reuse() {
  local name="$1" gopath_bin
  gopath_bin="$(go env GOPATH)/bin/${name}"
  if [ ! -e "${BIN}/${name}" ] && works "${gopath_bin}"; then
    cp "${gopath_bin}" "${BIN}/${name}"
    log "copied ${gopath_bin}"
  fi
}

install_minio() {
  reuse minio
  if works "${BIN}/minio"; then return; fi
  log "go install github.com/minio/minio@latest (takes a few minutes)"
  go install github.com/minio/minio@latest
}

install_ferretdb() {
  reuse ferretdb
  if works "${BIN}/ferretdb"; then return; fi
  # `go install .../cmd/ferretdb@v1.24.2` is refused by the module proxy's version list here,
  # so download the module and build it from a writable copy. FerretDB embeds
  # build/version/version.txt (made by its `bin/task gen-version`) and panics without it.
  local dir src
  log "go mod download github.com/FerretDB/FerretDB@${FERRETDB_VERSION}"
  dir="$(go mod download -json "github.com/FerretDB/FerretDB@${FERRETDB_VERSION}" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  if [ -z "${dir}" ] || [ ! -d "${dir}" ]; then
    log "could not find the module directory of FerretDB ${FERRETDB_VERSION}"
    exit 1
  fi
  src="${ROOT}/.state/build/ferretdb-${FERRETDB_VERSION}"
  rm -rf "${src}"
  mkdir -p "$(dirname "${src}")"
  cp -R "${dir}" "${src}"
  chmod -R u+w "${src}"
  echo "${FERRETDB_VERSION}" > "${src}/build/version/version.txt"
  log "go build ./cmd/ferretdb (takes a few minutes)"
  (cd "${src}" && go build -o "${BIN}/ferretdb" ./cmd/ferretdb)
  rm -rf "${src}"
}

# tests/test_manifests_*.py render deploy/ and eventing/ with it (tests/support/kustomize.py).
# Counts as installed when `kustomize version` runs and prints the pinned version.
kustomize_ok() {
  [ -x "${BIN}/kustomize" ] && [ "$("${BIN}/kustomize" version 2>/dev/null)" = "${KUSTOMIZE_VERSION}" ]
}

install_kustomize() {
  if kustomize_ok; then return; fi
  log "go install sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION} (1-2 minutes)"
  go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"
}

install_minio
install_ferretdb
install_kustomize
works "${BIN}/minio" && works "${BIN}/ferretdb" && kustomize_ok
log "ok: $(ls "${BIN}" | tr '\n' ' ')"
