#!/usr/bin/env bash
# Fetch the schemas tests/test_manifests_*.py validate our YAML against, into .state/schemas/.
#
# - Knative Serving and Eventing CRDs (their openAPIV3Schema; Eventing's include the alpha
#   RequestReply of eventing/examples/), the Serving annotation key constants and Eventing's
#   config-features ConfigMap (the feature flag names eventing/features/ sets), from the Go
#   modules at the pinned versions (`go mod download`, the Go module proxy); also the
#   queue-proxy port constants and the pod labels of the activator, the autoscaler and the
#   MT broker filter (what deploy/networkpolicy.yaml lets in).
# - The Kubernetes OpenAPI v3 document of networking.k8s.io/v1 (the NetworkPolicy schema), from
#   the k8s.io/kubernetes module (api/openapi-spec/v3/) at KUBERNETES_VERSION.
# - The func.yaml JSON schema that knative/func ships (schema/func_yaml-schema.json): the
#   unchanged copy in ../shared/schemas/ beside the project (knative/func commit c18d6045,
#   2026-08-22, Apache-2.0; never copied into this tree), or a copy named by FUNC_SCHEMA_JSON.
#   The Go module proxy refuses knative.dev/func, so it is not downloaded.
#
# Idempotent: a version already extracted (or already refused) is not fetched again. Writes $OUT/index.json with the
# files found per source; a source that could not be fetched is recorded with its error instead
# (Serving, Eventing and Kubernetes are required: exit 1; func is optional: without ../shared the test skips
# the official func.yaml schema check and says why).
set -euo pipefail

# Pinned versions (Knative 1.x = module v0.(x+27)); bump together with docs/deploy.md.
SERVING_VERSION=${SERVING_VERSION:-v0.51.0}
EVENTING_VERSION=${EVENTING_VERSION:-v0.50.0}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.34.0}
FUNC_VERSION=c18d6045

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED_FUNC_SCHEMA="$ROOT/../shared/schemas/func_yaml-schema.json"
OUT=${SCHEMAS_DIR:-$ROOT/.state/schemas}
mkdir -p "$OUT"

# Print the module directory of $1@$2 (download it if needed); on failure print nothing and put
# the error in $OUT/<name>.error.
module_dir() {
    local mod=$1 ver=$2 name=$3 json dir err
    if ! command -v go >/dev/null 2>&1; then
        echo "go is not installed" >"$OUT/$name.error"
        return 1
    fi
    json=$(cd "$OUT" && GOFLAGS=-mod=mod timeout 300 go mod download -json "$mod@$ver" 2>&1) || true
    dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        err=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' | head -n1)
        printf '%s@%s: %s\n' "$mod" "$ver" "${err:-$json}" >"$OUT/$name.error"
        return 1
    fi
    printf '%s\n' "$dir"
}

# Copy files (SRC relative to the module dir, or SRC=NAME to rename) of module $1@$3 into
# $OUT/$2 unless already there. .complete records the module and the file list, so adding a file
# here extracts again (the module itself stays in Go's module cache).
extract() {
    local mod=$1 dest=$2 ver=$3 name=$4; shift 4
    local target="$OUT/$dest" f dir stamp
    stamp="$mod@$ver $*"
    if [ -f "$target/.complete" ] && [ "$(cat "$target/.complete")" = "$stamp" ]; then
        return 0
    fi
    # A failure of this very version is cached too (set SCHEMAS_RETRY=1 to try again).
    if [ -z "${SCHEMAS_RETRY:-}" ] && grep -qs "^$mod@$ver:" "$OUT/$name.error"; then
        return 1
    fi
    dir=$(module_dir "$mod" "$ver" "$name") || return 1
    rm -rf "$target.tmp" && mkdir -p "$target.tmp"
    for f in "$@"; do
        case $f in
            *=*) cp "$dir/${f%%=*}" "$target.tmp/${f#*=}" ;;
            *) cp "$dir/$f" "$target.tmp/$(basename "$f")" ;;
        esac
    done
    chmod -R u+w "$target.tmp"
    printf '%s\n' "$stamp" >"$target.tmp/.complete"
    rm -rf "$target" && mv "$target.tmp" "$target"
    rm -f "$OUT/$name.error"
}

status=0
extract knative.dev/serving "serving-$SERVING_VERSION" "$SERVING_VERSION" serving \
    config/core/300-resources/service.yaml \
    config/core/300-resources/configuration.yaml \
    config/core/300-resources/revision.yaml \
    pkg/apis/autoscaling/register.go=autoscaling_register.go \
    pkg/apis/serving/register.go=serving_register.go \
    pkg/networking/constants.go=networking_constants.go \
    config/core/deployments/activator.yaml=activator-deployment.yaml \
    config/core/deployments/autoscaler.yaml=autoscaler-deployment.yaml || status=1
extract knative.dev/eventing "eventing-$EVENTING_VERSION" "$EVENTING_VERSION" eventing \
    config/core/resources/broker.yaml \
    config/core/resources/trigger.yaml \
    config/core/resources/sinkbindings.yaml \
    config/core/resources/requestreply.yaml \
    config/core/configmaps/features.yaml=config-features.yaml \
    config/brokers/mt-channel-broker/deployments/broker-filter.yaml=broker-filter-deployment.yaml \
    || status=1
extract k8s.io/kubernetes "kubernetes-$KUBERNETES_VERSION" "$KUBERNETES_VERSION" kubernetes \
    api/openapi-spec/v3/apis__networking.k8s.io__v1_openapi.json=networking-v1-openapi.json \
    || status=1

func_src=""
rm -rf "$OUT/func-local"
func_schema=${FUNC_SCHEMA_JSON:-}
if [ -z "$func_schema" ] && [ -f "$SHARED_FUNC_SCHEMA" ]; then
    func_schema=$SHARED_FUNC_SCHEMA
fi
if [ -n "$func_schema" ]; then
    mkdir -p "$OUT/func-local"
    cp "$func_schema" "$OUT/func-local/func_yaml-schema.json"
    func_src="func-local"
else
    echo "no func.yaml schema: neither FUNC_SCHEMA_JSON nor $SHARED_FUNC_SCHEMA" >"$OUT/func.error"
fi

# index.json: what the tests can use (paths relative to $OUT) and why something is missing.
python_bin=${PYTHON:-python3}
"$python_bin" - "$OUT" "$SERVING_VERSION" "$EVENTING_VERSION" "$FUNC_VERSION" "$func_src" \
    "$KUBERNETES_VERSION" <<'PY'
import json, pathlib, sys
out, serving, eventing, func, func_src, kubernetes = sys.argv[1:7]
root = pathlib.Path(out)
def entry(name, version, dirname):
    d = root / dirname if dirname else None
    err = root / f"{name}.error"
    complete = d is not None and ((d / ".complete").exists() or dirname == "func-local")
    if complete:
        return {"version": version, "dir": dirname,
                "files": sorted(p.name for p in d.iterdir() if not p.name.startswith("."))}
    return {"version": version, "error": err.read_text().strip() if err.exists() else "missing"}
index = {"serving": entry("serving", serving, f"serving-{serving}"),
         "eventing": entry("eventing", eventing, f"eventing-{eventing}"),
         "kubernetes": entry("kubernetes", kubernetes, f"kubernetes-{kubernetes}"),
         "func": entry("func", func, func_src or None)}
(root / "index.json").write_text(json.dumps(index, indent=2) + "\n")
for k, v in index.items():
    print(f"{k} {v['version']}: " + (v["dir"] if "dir" in v else "UNAVAILABLE: " + v["error"]))
PY
exit $status
