{{/* Name of the chart (or nameOverride). */}}
{{- define "aicoe-spawner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: <release>-<chart>, or fullnameOverride. */}}
{{- define "aicoe-spawner.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Component names (Deployments, Services, ServiceAccounts, Roles). */}}
{{- define "aicoe-spawner.hub" -}}{{ include "aicoe-spawner.fullname" . }}-hub{{- end -}}
{{- define "aicoe-spawner.proxy" -}}{{ include "aicoe-spawner.fullname" . }}-proxy{{- end -}}
{{- define "aicoe-spawner.proxyApi" -}}{{ include "aicoe-spawner.fullname" . }}-proxy-api{{- end -}}
{{- define "aicoe-spawner.proxyPublic" -}}{{ include "aicoe-spawner.fullname" . }}-proxy-public{{- end -}}
{{- define "aicoe-spawner.builder" -}}{{ include "aicoe-spawner.fullname" . }}-builder{{- end -}}

{{- define "aicoe-spawner.hubServiceAccount" -}}
{{- if .Values.hub.serviceAccount.create -}}
{{- default (include "aicoe-spawner.hub" .) .Values.hub.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.hub.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aicoe-spawner.builderServiceAccount" -}}
{{- if .Values.builder.serviceAccount.create -}}
{{- default (include "aicoe-spawner.builder" .) .Values.builder.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.builder.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose ImageStreams are the catalog (default: the release namespace). */}}
{{- define "aicoe-spawner.imageNamespaces" -}}
{{- if .Values.imageStreams.namespaces -}}
{{- toJson .Values.imageStreams.namespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- define "aicoe-spawner.builderBackend" -}}
{{- if .Values.builder.backend -}}
{{- .Values.builder.backend -}}
{{- else if .Values.openshift.enabled -}}
auto
{{- else -}}
kubernetes
{{- end -}}
{{- end -}}

{{/* Images. */}}
{{- define "aicoe-spawner.hubImage" -}}
{{- printf "%s:%s" .Values.hub.image.name (default .Chart.AppVersion .Values.hub.image.tag) -}}
{{- end -}}
{{- define "aicoe-spawner.builderImage" -}}
{{- if .Values.builder.image.name -}}
{{- printf "%s:%s" .Values.builder.image.name (default .Chart.AppVersion .Values.builder.image.tag) -}}
{{- else -}}
{{- include "aicoe-spawner.hubImage" . -}}
{{- end -}}
{{- end -}}

{{/* Labels: app.kubernetes.io/* plus zero-to-jupyterhub's app/component/release. */}}
{{- define "aicoe-spawner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "aicoe-spawner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: aicoe-spawner
app: {{ include "aicoe-spawner.name" . }}
release: {{ .Release.Name }}
{{- end -}}

{{- define "aicoe-spawner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aicoe-spawner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
A generated secret value that survives upgrades: the explicit value if set, else the value in
the existing Secret, else a new random one. Call with (list $ "secret-key" .explicitValue).
*/}}
{{- define "aicoe-spawner.secretValue" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $explicit := index . 2 -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "aicoe-spawner.hub" $root) -}}
{{- if and $existing $existing.data (hasKey $existing.data $key) -}}
{{- index $existing.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 64 | sha256sum -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The builder's rules for its build Jobs (in the release namespace or builder.buildNamespace). */}}
{{- define "aicoe-spawner.builderJobRules" -}}
# Build Jobs: run, follow, cancel (delete) them.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Find the pod of a build Job, follow its state, and delete a finished build's pods (by the
# job-name label) together with the Job.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, deletecollection]
# Stream the build log.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
{{- end -}}
