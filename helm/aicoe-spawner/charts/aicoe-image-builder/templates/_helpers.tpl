{{/* Name of the chart (or nameOverride; the aicoe-spawner chart sets "aicoe-spawner", so
that names and labels are those of the hub's release). */}}
{{- define "aicoe-image-builder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every name: <release>-<name>, or fullnameOverride. */}}
{{- define "aicoe-image-builder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "aicoe-image-builder.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The builder's Deployment, Service, Secret, Roles: "<fullname>-builder". */}}
{{- define "aicoe-image-builder.builder" -}}{{ include "aicoe-image-builder.fullname" . }}-builder{{- end -}}

{{- define "aicoe-image-builder.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aicoe-image-builder.builder" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespaces of the notebook catalog the builder imports tags of (default: the release's). */}}
{{- define "aicoe-image-builder.importNamespaces" -}}
{{- toJson (.Values.imageImport.namespaces | default (list .Release.Namespace)) -}}
{{- end -}}

{{- define "aicoe-image-builder.backend" -}}
{{- if .Values.backend -}}
{{- .Values.backend -}}
{{- else if .Values.openshift.enabled -}}
auto
{{- else -}}
kubernetes
{{- end -}}
{{- end -}}

{{- define "aicoe-image-builder.image" -}}
{{- printf "%s:%s" .Values.image.name (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The hub's base URL: hub.url, else the hub of the aicoe-spawner release this chart is
part of. */}}
{{- define "aicoe-image-builder.hubUrl" -}}
{{- default (printf "http://%s-hub:8081" (include "aicoe-image-builder.fullname" .)) .Values.hub.url | trimSuffix "/" -}}
{{- end -}}

{{- define "aicoe-image-builder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "aicoe-image-builder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: aicoe-spawner
app.kubernetes.io/component: image-builder
app: {{ include "aicoe-image-builder.name" . }}
release: {{ .Release.Name }}
component: image-builder
{{- end -}}

{{- define "aicoe-image-builder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aicoe-image-builder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: image-builder
{{- end -}}

{{/*
A generated secret value that survives upgrades: the explicit value if set, else the value in
the builder's existing Secret (or, once, in the Secret of the aicoe-spawner hub that held the
builder's tokens before this chart), else a new random one, made once per rendering. Call
with (list $ "secret-key" .explicitValue).
*/}}
{{- define "aicoe-image-builder.secretValue" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $explicit := index . 2 -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- if not (hasKey $root.Values "_generatedSecrets") -}}
{{- $_ := set $root.Values "_generatedSecrets" dict -}}
{{- end -}}
{{- $cache := $root.Values._generatedSecrets -}}
{{- if not (hasKey $cache $key) -}}
{{- $value := "" -}}
{{- range $name := list (include "aicoe-image-builder.builder" $root) (printf "%s-hub" (include "aicoe-image-builder.fullname" $root)) -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if and (not $value) $existing $existing.data (hasKey $existing.data $key) -}}
{{- $value = index $existing.data $key | b64dec -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cache $key ($value | default (randAlphaNum 64 | sha256sum)) -}}
{{- end -}}
{{- index $cache $key -}}
{{- end -}}
{{- end -}}

{{/* The builder's tokens (key: explicit value); the API token is left out when
hub.apiTokenSecret names a Secret of the hub's side that holds it. */}}
{{- define "aicoe-image-builder.tokens" -}}
{{- $tokens := dict "builder.cookie-secret" .Values.cookieSecret "builder.webhook-secret" .Values.webhookSecret -}}
{{- if not .Values.hub.apiTokenSecret.name -}}
{{- $_ := set $tokens "builder.api-token" .Values.apiToken -}}
{{- end -}}
{{- toJson $tokens -}}
{{- end -}}

{{/* Name of the Secret with the tokens: existingSecret, else the chart's. */}}
{{- define "aicoe-image-builder.tokenSecret" -}}
{{- default (include "aicoe-image-builder.builder" .) .Values.existingSecret -}}
{{- end -}}

{{/* secretKeyRef of the JupyterHub API token. */}}
{{- define "aicoe-image-builder.apiTokenRef" -}}
{{- if .Values.hub.apiTokenSecret.name -}}
{name: {{ .Values.hub.apiTokenSecret.name }}, key: {{ .Values.hub.apiTokenSecret.key | default "api-token" }}}
{{- else -}}
{name: {{ include "aicoe-image-builder.tokenSecret" . }}, key: builder.api-token}
{{- end -}}
{{- end -}}

{{/* Checksum of the tokens, for the pod annotation: a changed token rolls the builder. With
existingSecret or hub.apiTokenSecret, of their names (restart the builder yourself after
changing their content). */}}
{{- define "aicoe-image-builder.tokenChecksum" -}}
{{- $parts := list .Values.existingSecret (toJson .Values.hub.apiTokenSecret) -}}
{{- if not .Values.existingSecret -}}
{{- range $key, $explicit := include "aicoe-image-builder.tokens" . | fromJson -}}
{{- $parts = append $parts (include "aicoe-image-builder.secretValue" (list $ $key $explicit)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{/* The builder's rules for its build Jobs (in the release namespace or builder.buildNamespace). */}}
{{- define "aicoe-image-builder.builderJobRules" -}}
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

{{/* Namespace of build Jobs: builder.buildNamespace, default "<release namespace>-builds". */}}
{{- define "aicoe-image-builder.buildNamespace" -}}
{{- default (printf "%s-builds" .Release.Namespace | trunc 63 | trimSuffix "-") .Values.buildNamespace -}}
{{- end -}}

{{/* Whether build Jobs run beside the hub (builder.buildNamespace = the release namespace). */}}
{{- define "aicoe-image-builder.buildsBesideHub" -}}
{{- if eq (include "aicoe-image-builder.buildNamespace" .) .Release.Namespace -}}true{{- end -}}
{{- end -}}

{{/* The builder's ServiceAccount as the API server names the requests it makes. */}}
{{- define "aicoe-image-builder.builderUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "aicoe-image-builder.serviceAccount" .) -}}
{{- end -}}

{{/* Name of a cluster-scoped object of this release: "<namespace>.<fullname>-<suffix>". */}}
{{- define "aicoe-image-builder.clusterName" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s-%s" $root.Release.Namespace (include "aicoe-image-builder.fullname" $root) (index . 1) -}}
{{- end -}}

{{/* NetworkPolicy egress rule to the cluster DNS (networkPolicy.dns*). */}}
{{- define "aicoe-image-builder.dnsEgress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    {{- with $np.dnsPeers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- range $np.dnsCIDRs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- range $np.dnsPorts }}
    - {protocol: UDP, port: {{ . }}}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{/* NetworkPolicy egress rule to the Git hosts (builder.networkPolicy.git*), or nothing. */}}
{{- define "aicoe-image-builder.gitEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.gitCIDRs -}}
- to:
    {{- range $np.gitCIDRs }}
    - ipBlock:
        cidr: {{ . | quote }}
        {{- if $np.gitExcept }}
        except: {{ toJson $np.gitExcept }}
        {{- end }}
    {{- end }}
  ports:
    {{- range $np.gitPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress rule to the registry (networkPolicy.registryCIDRs/Peers/Ports):
build pods push there; the builder imports the catalog's tags from there. */}}
{{- define "aicoe-image-builder.registryEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if or $np.registryCIDRs $np.registryPeers -}}
- to:
    {{- range $np.registryCIDRs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
    {{- with $np.registryPeers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range $np.registryPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* Capabilities of build containers (STEP_CAPABILITIES + MKNOD + SYS_ADMIN of
aicoe_spawner/builder/backends/kubernetes.py), as a CEL list. */}}
{{- define "aicoe-image-builder.buildCapabilities" -}}
["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETFCAP", "SETGID", "SETUID", "SYS_CHROOT", "MKNOD", "SYS_ADMIN"]
{{- end -}}

{{/* NetworkPolicy egress rule to the API server (builder.networkPolicy.apiServer*). */}}
{{- define "aicoe-image-builder.apiServerEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.apiServerCIDRs -}}
- to:
    {{- range $np.apiServerCIDRs }}
    - ipBlock:
        cidr: {{ . | quote }}
        {{- if $np.apiServerExcept }}
        except: {{ toJson $np.apiServerExcept }}
        {{- end }}
    {{- end }}
  ports:
    {{- range $np.apiServerPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets of a pod spec (JSON) from a list of Secret names. */}}
{{- define "aicoe-image-builder.pullSecrets" -}}
{{- $refs := list -}}
{{- range . -}}
{{- $refs = append $refs (dict "name" .) -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{/* NetworkPolicy peer: the hub's pods (hub.podLabels, default the aicoe-spawner hub's of
this release). */}}
{{- define "aicoe-image-builder.hubPeer" -}}
- podSelector:
    matchLabels:
      {{- if .Values.hub.podLabels }}
      {{- toYaml .Values.hub.podLabels | nindent 6 }}
      {{- else }}
      app.kubernetes.io/name: {{ include "aicoe-image-builder.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: hub
      {{- end }}
{{- end -}}

{{/* NetworkPolicy peer: the proxy's pods (hub.proxyPodLabels, default the aicoe-spawner
proxy's of this release). */}}
{{- define "aicoe-image-builder.proxyPeer" -}}
- podSelector:
    matchLabels:
      {{- if .Values.hub.proxyPodLabels }}
      {{- toYaml .Values.hub.proxyPodLabels | nindent 6 }}
      {{- else }}
      app.kubernetes.io/name: {{ include "aicoe-image-builder.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: proxy
      {{- end }}
{{- end -}}
