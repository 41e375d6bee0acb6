# Deploy to a Knative cluster (included by the top-level Makefile; docs/deploy.md explains it).
#   make deploy REGISTRY=ghcr.io/you [NAMESPACE=llmfn] [RETRY_AFTER=on|feature|off]
#                                                        func deploy x3, eventing/, timeout patches
#   make undeploy [NAMESPACE=llmfn]                      remove all of it
#   make schemas                                         fetch/cache the schemas tests validate with
REGISTRY ?=
NAMESPACE ?= llmfn
FUNC ?= func
KUBECTL ?= kubectl
# audit first: it is the Trigger's subscriber and dead-letter sink.
DEPLOY_FUNCTIONS ?= audit generate embed
# eventing/ applied through an overlay that only sets the namespace (eventing/ stays untouched).
DEPLOY_OVERLAY := .state/deploy/eventing
# The request Triggers' retryAfterMax needs Eventing's delivery-retryafter feature flag:
#   on      the flag is already enabled (a cluster admin applied eventing/features/)
#   feature apply eventing/features/delivery-retryafter.yaml first (needs cluster-admin rights)
#   off     drop retryAfterMax (eventing/components/no-retry-after): Retry-After is ignored
RETRY_AFTER ?= on

.PHONY: deploy undeploy schemas deploy-overlay

schemas:
	PYTHON=$(or $(wildcard $(PY)),python3) bash scripts/fetch_schemas.sh

deploy-overlay:
	mkdir -p $(DEPLOY_OVERLAY)
	printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  'namespace: $(NAMESPACE)' 'resources:' '  - ../../../eventing' \
	  >$(DEPLOY_OVERLAY)/kustomization.yaml
	if [ "$(RETRY_AFTER)" = off ]; then \
	  printf '%s\n' 'components:' '  - ../../../eventing/components/no-retry-after' \
	    >>$(DEPLOY_OVERLAY)/kustomization.yaml; \
	fi

deploy: vendor deploy-overlay
	@test -n "$(REGISTRY)" || { echo "make deploy needs REGISTRY=<registry>/<user>" >&2; exit 2; }
	$(KUBECTL) create namespace $(NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	for fn in $(DEPLOY_FUNCTIONS); do \
	  $(FUNC) deploy --path functions/$$fn --registry $(REGISTRY) --namespace $(NAMESPACE); \
	done
	if [ "$(RETRY_AFTER)" = feature ]; then \
	  $(KUBECTL) apply --server-side --field-manager=llmfn --force-conflicts \
	    -f eventing/features/delivery-retryafter.yaml; \
	fi
	$(KUBECTL) apply -k $(DEPLOY_OVERLAY)
	# Revision timeouts func.yaml cannot express (a merge patch; creates a new revision).
	for fn in $(DEPLOY_FUNCTIONS); do \
	  $(KUBECTL) patch ksvc $$fn --namespace $(NAMESPACE) --type merge \
	    --patch-file deploy/patches/$$fn-timeouts.yaml; \
	done
	$(KUBECTL) get ksvc --namespace $(NAMESPACE) $(DEPLOY_FUNCTIONS) \
	  -o custom-columns='NAME:.metadata.name,URL:.status.url,LATEST:.status.latestReadyRevisionName,READY:.status.conditions[?(@.type=="Ready")].status'

undeploy: deploy-overlay
	-$(KUBECTL) delete -k $(DEPLOY_OVERLAY) --ignore-not-found
	-for fn in $(DEPLOY_FUNCTIONS); do \
	  $(FUNC) delete --path functions/$$fn --namespace $(NAMESPACE); \
	done
