{{/* Names, labels and the settings several templates share. */}}

{{- define "kubemap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name holds it. */}}
{{- define "kubemap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubemap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: immutable once a Deployment exists, so only name and instance. */}}
{{- define "kubemap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubemap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels, on every object the chart renders (the operator pod included). */}}
{{- define "kubemap.labels" -}}
helm.sh/chart: {{ include "kubemap.chart" . }}
{{ include "kubemap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubemap
{{- end }}

{{- define "kubemap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubemap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: give the name of an existing ServiceAccount when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubemap.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Function-mode worker image: worker.image.* falling back to the operator's image. */}}
{{- define "kubemap.workerImage" -}}
{{- if or .Values.worker.image.repository .Values.worker.image.tag }}
{{- $repo := default .Values.image.repository .Values.worker.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.worker.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- else }}
{{- include "kubemap.image" . }}
{{- end }}
{{- end }}

{{/* Watched namespaces as a list; namespaced RBAC with none given means the release's. */}}
{{- define "kubemap.watchNamespaces" -}}
{{- $ns := .Values.operator.watchNamespaces }}
{{- if and (eq .Values.rbac.scope "namespaced") (empty $ns) }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- toJson $ns }}
{{- end }}

{{/* The Secret worker pods read S3 credentials from (in the task's namespace). */}}
{{- define "kubemap.s3SecretName" -}}
{{- default "kubemap-s3" .Values.s3.existingSecret }}
{{- end }}

{{/* True when the chart creates the S3 Secret from values. */}}
{{- define "kubemap.createS3Secret" -}}
{{- if and (not .Values.s3.existingSecret) .Values.s3.accessKeyId .Values.s3.secretAccessKey }}true{{ end }}
{{- end }}

{{/* KUBEMAP_WORKER_POD_DEFAULTS: the operator applies these to worker pods. */}}
{{- define "kubemap.workerPodDefaults" -}}
{{- $d := dict
  "resources" .Values.worker.resources
  "securityContext" .Values.worker.securityContext
  "podSecurityContext" .Values.worker.podSecurityContext
  "automountServiceAccountToken" .Values.worker.automountServiceAccountToken }}
{{- with .Values.worker.imagePullPolicy }}
{{- $_ := set $d "imagePullPolicy" . }}
{{- end }}
{{- toJson $d }}
{{- end }}

{{/*
RBAC rules of the operator, shared by the Role and the ClusterRole. Least privilege:
no Secrets (worker pods read S3 credentials via secretKeyRef; the kubelet fetches them),
no CRDs and no namespaces (the chart installs the CRD; kopf's scanning is off and
watchNamespaces are exact names), no kopf.dev peering objects (peering is off with one
replica). pods/log and configmaps only to keep a failed pod's log tail after deleting it.
*/}}
{{- define "kubemap.rbacRules" -}}
# Reconcile MapTasks: list/watch to see them, patch/update for kopf's finalizer and
# its progress annotations, delete for spec.ttlSecondsAfterFinished.
- apiGroups: ["kubemap.io"]
  resources: ["maptasks"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
# Write the small status (phase, counts, index ranges).
- apiGroups: ["kubemap.io"]
  resources: ["maptasks/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on worker pods need update on finalizers
# where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["kubemap.io"]
  resources: ["maptasks/finalizers"]
  verbs: ["update"]
# Worker pods: create them, watch them to count finished indices, delete surplus or
# finished ones, patch to remove the kubemap.io/tracking finalizer once counted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# Before deleting a failed pod, read the tail of its log (operator/kubemap_operator/logkeeper.py).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# ...and keep it in the ConfigMap <task>-logs, owned by the MapTask (`kubemap logs --index`).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# kopf posts handler outcomes as Events on the MapTask (core API).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same Events through the events.k8s.io API.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# A MapTask's (or pool's) spec.queueName: whether its Kueue LocalQueue exists, read before
# the first pod (a missing queue would keep every pod gated for ever). No Kueue: a 404.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
{{- if .Values.pools.enabled }}
# Warm pools: watch WorkerPools, write their small status.
- apiGroups: ["kubemap.io"]
  resources: ["workerpools"]
  verbs: ["get", "list", "watch", "patch"]
# The pools' small status (ready, busy, idle workers).
- apiGroups: ["kubemap.io"]
  resources: ["workerpools/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion from a pool's Deployment and Secret.
- apiGroups: ["kubemap.io"]
  resources: ["workerpools/finalizers"]
  verbs: ["update"]
# Each pool's workers are a Deployment the operator creates and scales.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
# Each pool's token Secret: written, never read (the dispatcher derives tokens from its key).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
{{- end }}
{{- end }}

{{/* The URL pool workers reach the dispatcher at. */}}
{{- define "kubemap.dispatcherUrl" -}}
{{- if .Values.pools.advertiseUrl }}
{{- .Values.pools.advertiseUrl }}
{{- else }}
{{- printf "http://%s-dispatcher.%s.svc:%d" (include "kubemap.fullname" .) .Release.Namespace (int .Values.pools.port) }}
{{- end }}
{{- end }}

{{/* Fail early, naming the value and the fix, on combinations the schema cannot express. */}}
{{- define "kubemap.validate" -}}
{{- if and .Values.s3.existingSecret (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) }}
{{- fail "s3: give either s3.existingSecret or s3.accessKeyId/s3.secretAccessKey, not both" }}
{{- end }}
{{- if and (not .Values.s3.existingSecret) (ne (empty .Values.s3.accessKeyId) (empty .Values.s3.secretAccessKey)) }}
{{- fail "s3: set both s3.accessKeyId and s3.secretAccessKey for the chart to create the kubemap-s3 Secret (or neither)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (and .Values.metrics.enabled .Values.metrics.service.enabled)) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true and metrics.service.enabled=true" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.operator.livenessPort)) }}
{{- fail "metrics.port and operator.livenessPort must differ: both endpoints bind them" }}
{{- end }}
{{- end }}
