{{/* Chart name. */}}
{{- define "ptqflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-ptqflow, or the release name when it already contains the chart name. */}}
{{- define "ptqflow.fullname" -}}
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

{{- define "ptqflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ptqflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ptqflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ptqflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ptqflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ptqflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ptqflow.launcherName" -}}
{{- default (printf "%s-launcher" (include "ptqflow.fullname" .)) .Values.rbac.launcher.name }}
{{- end }}

{{/* The chart's own image (hook, poll, upload Job). */}}
{{- define "ptqflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* A step image: devices.<key>.image; an empty tag is <appVersion>[-cuda|-npu] as ptqflow.orchestration.images. */}}
{{- define "ptqflow.deviceImage" -}}
{{- $image := (index .root.Values.devices .key).image }}
{{- $suffix := get (dict "cpu" "" "gpu" "-cuda" "npu" "-npu") .key }}
{{- printf "%s:%s" $image.repository (default (printf "%s%s" .root.Chart.AppVersion $suffix) $image.tag) }}
{{- end }}

{{/* The placement file (read by ptqflow.orchestration.pod_placement.load_placement_file). */}}
{{- define "ptqflow.placement" -}}
{{- $devices := dict }}
{{- range $key := list "cpu" "gpu" "npu" }}
{{- $d := index $.Values.devices $key }}
{{- range $kind := list "requests" "limits" }}
{{- range $name, $_ := (get $d.resources $kind) }}
{{- if not (has $name (list "cpu" "memory" $d.accelerator)) }}
{{- fail (printf "devices.%s.resources.%s.%s: only cpu, memory and the device's accelerator (%s) can be set" $key $kind $name (default "none" $d.accelerator)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $d.accelerator (not (hasKey (default dict $d.resources.limits) $d.accelerator)) }}
{{- fail (printf "devices.%s.resources.limits.%s: the accelerator resource needs a limit" $key $d.accelerator) }}
{{- end }}
{{- $_ := set $devices $key (dict "image" (include "ptqflow.deviceImage" (dict "root" $ "key" $key)) "accelerator" $d.accelerator "resources" $d.resources "nodeSelector" $d.nodeSelector "tolerations" $d.tolerations "affinity" $d.affinity) }}
{{- end }}
{{- $s3 := dict "secretName" .Values.s3.existingSecret "env" .Values.s3.env }}
{{- $registry := dict "secretName" .Values.registry.existingSecret "env" (default dict .Values.registry.env) }}
{{- toYaml (dict "devices" $devices "s3" $s3 "registry" $registry) }}
{{- end }}

{{/* Namespace of the Airflow-side ConfigMaps. */}}
{{- define "ptqflow.airflowNamespace" -}}
{{- default .Release.Namespace .Values.airflow.namespace }}
{{- end }}

{{/* The hook pods' environment: secrets from existing Secrets, plain env, optionally the S3 Secret and the
registry Secret (optional keys; names set in hook.secretEnv or hook.env are left to those).
Called with (dict "root" $ "poll" bool): the poll pass needs no webhook secret. */}}
{{- define "ptqflow.hookEnv" -}}
{{- $root := .root }}
- name: PTQFLOW_HOOK_CONFIG
  value: /etc/ptqflow/hook.yaml
- name: HOME
  value: /tmp
{{- range $name, $ref := $root.Values.hook.secretEnv }}
{{- if and $ref (not (and $.poll (eq $name "PTQFLOW_WEBHOOK_SECRET"))) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
      optional: {{ $ref.optional | default false }}
{{- end }}
{{- end }}
{{- if $root.Values.hook.s3Env }}
{{- range $name, $key := $root.Values.s3.env }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.s3.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- $registry := $root.Values.registry }}
{{- if and $root.Values.hook.registryEnv $registry.existingSecret }}
{{- $explicit := list }}
{{- range $name, $ref := $root.Values.hook.secretEnv }}
{{- if $ref }}
{{- $explicit = append $explicit $name }}
{{- end }}
{{- end }}
{{- range $root.Values.hook.env }}
{{- $explicit = append $explicit .name }}
{{- end }}
{{- range $name, $key := $registry.env }}
{{- if not (has $name $explicit) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $registry.existingSecret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- with $root.Values.hook.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes every hook pod mounts: hook.yaml and the pipeline config at /etc/ptqflow, a writable /tmp. */}}
{{- define "ptqflow.hookVolumes" -}}
- name: config
  projected:
    sources:
      - configMap:
          name: {{ include "ptqflow.fullname" . }}-hook
      - configMap:
          name: {{ include "ptqflow.fullname" . }}-pipeline-config
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{- define "ptqflow.hookVolumeMounts" -}}
- name: config
  mountPath: /etc/ptqflow
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}
