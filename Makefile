# kubemap on a local kind cluster, step by step (needs docker, kind, kubectl and helm):
#   make kind-up image kind-load s3 install example e2e     ...   make kind-down
# `make chart-check` runs the chart's checks that need no cluster (helm lint, template, schema).

KIND_CLUSTER ?= kubemap
IMAGE_REPO   ?= kubemap
IMAGE_TAG    ?= dev
IMAGE        := $(IMAGE_REPO):$(IMAGE_TAG)
NAMESPACE    ?= kubemap-system
RELEASE      ?= kubemap
CONTEXT      := kind-$(KIND_CLUSTER)
KUBECTL      ?= kubectl --context $(CONTEXT)
HELM         ?= helm --kube-context $(CONTEXT)
PYTHON       ?= .venv/bin/python
# The in-cluster S3 server of examples/kind/seaweedfs.yaml and its development keys.
S3_ENDPOINT  ?= http://seaweedfs.$(NAMESPACE):8333
S3_LOCAL_PORT ?= 18333
KIND_KUBECONFIG := .kubemap/kind-$(KIND_CLUSTER).kubeconfig

.PHONY: kind-up image kind-load s3 install example e2e kind-down chart-check sync-crd

kind-up:  ## create the kind cluster (context kind-$(KIND_CLUSTER))
	kind create cluster --name $(KIND_CLUSTER) --wait 120s

image:  ## build the one image (operator and worker): docker where a daemon runs, else scripts/image (buildah, then its checks)
	if docker info >/dev/null 2>&1; then docker build -t $(IMAGE) .; else IMAGE=$(IMAGE) scripts/image; fi

kind-load:  ## copy the image into the kind node (no registry needed)
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

s3:  ## SeaweedFS in the cluster, bucket "kubemap", Secret kubemap-s3 in kubemap-system and default
	$(KUBECTL) apply -f examples/kind/seaweedfs.yaml
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/seaweedfs --timeout=180s

install:  ## helm install the chart with the image loaded above and the in-cluster S3
	$(HELM) upgrade --install $(RELEASE) charts/kubemap -n $(NAMESPACE) --create-namespace \
	  --set image.repository=$(IMAGE_REPO) --set image.tag=$(IMAGE_TAG) \
	  --set s3.endpoint=$(S3_ENDPOINT) --set s3.defaultStore=s3://kubemap/tasks \
	  --set s3.existingSecret=kubemap-s3 --wait --timeout 180s

example:  ## run the inline-items example to completion and show it
	$(KUBECTL) apply -f examples/maptask-items.yaml
	$(KUBECTL) wait maptask/hello-items --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s
	$(KUBECTL) get maptasks

e2e:  ## the e2e suite against the kind cluster, S3 reached through a port-forward
	mkdir -p .kubemap && kind get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/seaweedfs $(S3_LOCAL_PORT):8333 >/dev/null & pf=$$!; \
	  trap 'kill $$pf' EXIT; sleep 2; \
	  KUBECONFIG=$(KIND_KUBECONFIG) AWS_ENDPOINT_URL_S3=http://127.0.0.1:$(S3_LOCAL_PORT) \
	  AWS_ACCESS_KEY_ID=kubemap AWS_SECRET_ACCESS_KEY=kubemap-dev-secret AWS_REGION=us-east-1 \
	  KUBEMAP_STORE=s3://kubemap/tasks \
	  $(PYTHON) -m pytest -m e2e tests/e2e

kind-down:  ## delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

sync-crd:  ## copy crds/maptask.yaml into the chart
	scripts/sync-crd

chart-check:  ## helm lint/template/schema checks (tests/unit/test_chart.py); needs no cluster
	$(PYTHON) -m pytest tests/unit/test_chart.py tests/unit/test_chart_schema.py tests/unit/test_chart_packaging.py -q
