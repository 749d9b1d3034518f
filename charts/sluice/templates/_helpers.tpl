{{/* Chart name, or nameOverride. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: fullnameOverride, else RELEASE-CHART (RELEASE alone if it
already contains the chart name). */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of cluster-scoped objects: unique per release namespace, so two releases with the
same name in different namespaces do not overwrite each other's ClusterRole. */}}
{{- define "sluice.clusterName" -}}
{{- printf "%s-%s" (include "sluice.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The admin Service exists for in-cluster scraping; the ServiceMonitor needs it. */}}
{{- define "sluice.adminServiceEnabled" -}}
{{- if or .Values.adminService.enabled .Values.serviceMonitor.enabled }}true{{ end -}}
{{- end -}}

{{/* Whether the preStop sleep action renders: asked for, and the cluster has it (1.30+). */}}
{{- define "sluice.preStopSleep" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}true{{ end -}}
{{- end -}}

{{/* Everything sluice reads and writes in the namespaces it watches. The single source for the
ClusterRole (all namespaces) and the per-namespace Roles (watchNamespaces). Keep in step with
scripts/chart_check.py (EXPECTED_WATCH_RULES) and the README's RBAC section. */}}
{{- define "sluice.watchRules" -}}
- apiGroups: ["sluice.dev"]
  resources: ["gatewayroutes", "ratelimitpolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["sluice.dev"]
  resources: ["gatewayroutes/status", "ratelimitpolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
  {{- with .Values.secretNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
{{- end -}}

{{/* Fail early on settings that would render but misbehave. */}}
{{- define "sluice.validate" -}}
{{- $drain := int .Values.drainTimeoutSeconds -}}
{{- $preStop := 0 -}}
{{- if include "sluice.preStopSleep" . }}{{ $preStop = int .Values.preStopSleepSeconds }}{{ end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $drain $preStop) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds (%d) + drainTimeoutSeconds (%d): the kubelet would kill sluice mid-drain" (int .Values.terminationGracePeriodSeconds) $preStop $drain) -}}
{{- end -}}
{{- if eq (int .Values.containerPorts.http) (int .Values.containerPorts.admin) -}}
{{- fail "containerPorts.http and containerPorts.admin must differ" -}}
{{- end -}}
{{- if or (eq (int .Values.containerPorts.https) (int .Values.containerPorts.http)) (eq (int .Values.containerPorts.https) (int .Values.containerPorts.admin)) -}}
{{- fail "containerPorts.https must differ from containerPorts.http and containerPorts.admin" -}}
{{- end -}}
{{- if eq (int .Values.service.port) (int .Values.service.httpsPort) -}}
{{- fail "service.port and service.httpsPort must differ" -}}
{{- end -}}
{{- if and (eq .Values.service.type "ClusterIP") .Values.service.externalTrafficPolicy -}}
{{- fail "service.externalTrafficPolicy applies only to service.type NodePort or LoadBalancer" -}}
{{- end -}}
{{- if and (eq .Values.service.type "ClusterIP") (not (kindIs "invalid" .Values.service.nodePort)) -}}
{{- fail "service.nodePort applies only to service.type NodePort or LoadBalancer" -}}
{{- end -}}
{{- if and (eq .Values.service.type "ClusterIP") (not (kindIs "invalid" .Values.service.httpsNodePort)) -}}
{{- fail "service.httpsNodePort applies only to service.type NodePort or LoadBalancer" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.service.nodePort)) (not (kindIs "invalid" .Values.service.httpsNodePort)) (eq (int .Values.service.nodePort) (int .Values.service.httpsNodePort)) -}}
{{- fail "service.nodePort and service.httpsNodePort must differ" -}}
{{- end -}}
{{- if regexMatch "^[^/]*//[^/@]*:[^/@]*@" .Values.redis.url -}}
{{- fail "redis.url must not carry a password (anyone who can read the Deployment would see it): put it in a Secret and set redis.passwordSecret" -}}
{{- end -}}
{{- if and .Values.redis.passwordSecret.name (not .Values.redis.url) -}}
{{- fail "redis.passwordSecret is set but redis.url is empty: set the URL of the Redis it belongs to" -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas) -}}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- if and (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail "autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- end -}}
{{- end -}}
