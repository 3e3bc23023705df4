{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "event-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already holds it. */}}
{{- define "event-router.fullname" -}}
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

{{- define "event-router.operatorName" -}}
{{- printf "%s-operator" (include "event-router.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "event-router.redisName" -}}
{{- printf "%s-redis" (include "event-router.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "event-router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "event-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: event-router
{{- end -}}

{{/* Selector labels of one component (router, operator, redis). */}}
{{- define "event-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "event-router.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "event-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "event-router.routerServiceAccount" -}}
{{- include "event-router.fullname" . -}}
{{- end -}}

{{- define "event-router.operatorServiceAccount" -}}
{{- include "event-router.operatorName" . -}}
{{- end -}}

{{/* The EVENT_ROUTER_REDIS variable for routers and operator. */}}
{{- define "event-router.redisEnv" -}}
{{- if eq .Values.redis.mode "external" }}
- name: EVENT_ROUTER_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ required "redis.external.existingSecret is required when redis.mode is external" .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.urlKey }}
{{- else if eq .Values.redis.mode "bundled" }}
- name: EVENT_ROUTER_REDIS
  value: {{ printf "redis://%s:6379/" (include "event-router.redisName" .) | quote }}
{{- end }}
{{- if ne .Values.redis.mode "none" }}
- name: EVENT_ROUTER_REDIS_KEY_PREFIX
  value: {{ .Values.redis.keyPrefix | quote }}
{{- end }}
{{- end -}}

{{/* Fails rendering on combinations that cannot work. */}}
{{- define "event-router.checks" -}}
{{- $r := .Values.router -}}
{{- if le (int $r.terminationGracePeriodSeconds) (add $r.shutdownGraceSeconds $r.preStopSleepSeconds | int) -}}
{{- fail "router.terminationGracePeriodSeconds must exceed router.shutdownGraceSeconds + router.preStopSleepSeconds, or Kubernetes kills routers before they drain" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "none") .Values.operator.enabled -}}
{{- fail "operator.enabled needs Redis: set redis.mode to bundled or external, or operator.enabled=false" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "none") (or (gt (int $r.replicas) 1) .Values.autoscaling.enabled) -}}
{{- fail "redis.mode none is the in-memory broker of one process: set router.replicas=1 and autoscaling.enabled=false" -}}
{{- end -}}
{{- end -}}
