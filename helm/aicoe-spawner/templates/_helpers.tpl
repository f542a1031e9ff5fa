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
{{- define "aicoe-spawner.imagePuller" -}}{{ include "aicoe-spawner.fullname" . }}-image-puller{{- end -}}

{{- define "aicoe-spawner.hubServiceAccount" -}}
{{- if .Values.hub.serviceAccount.create -}}
{{- default (include "aicoe-spawner.hub" .) .Values.hub.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.hub.serviceAccount.name -}}
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
the existing Secret, else a new random one, made once per rendering (the Secret and the
checksum annotations of the pods see the same value). Call with
(list $ "secret-key" .explicitValue).
*/}}
{{- define "aicoe-spawner.secretValue" -}}
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
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "aicoe-spawner.hub" $root) -}}
{{- if and $existing $existing.data (hasKey $existing.data $key) -}}
{{- $_ := set $cache $key (index $existing.data $key | b64dec) -}}
{{- else -}}
{{- $_ := set $cache $key (randAlphaNum 64 | sha256sum) -}}
{{- end -}}
{{- end -}}
{{- index $cache $key -}}
{{- end -}}
{{- end -}}

{{/* The tokens of the hub and the proxy (key: explicit value), in the chart's Secret unless
hub.existingSecret names one that holds them. The builder's are in its own Secret
(builder.existingSecret; helm/aicoe-image-builder). */}}
{{- define "aicoe-spawner.tokens" -}}
{{- toJson (dict
  "proxy.token" .Values.proxy.secretToken
  "hub.cookie-secret" .Values.hub.cookieSecret) -}}
{{- end -}}

{{/* The builder's Secret, where the hub reads the builder's API token. */}}
{{- define "aicoe-spawner.builderTokenSecret" -}}
{{- default (include "aicoe-spawner.builder" .) .Values.builder.existingSecret -}}
{{- end -}}

{{/* What the hub's copy of the builder's API token depends on, for the hub's checksum
annotation: the explicit builder.apiToken and the Secrets named (a generated token is kept, so
it changes nothing). */}}
{{- define "aicoe-spawner.builderTokenChecksum" -}}
{{- list .Values.builder.apiToken .Values.builder.existingSecret | toJson | sha256sum -}}
{{- end -}}

{{/* Name of the Secret with the tokens: hub.existingSecret, else the chart's. */}}
{{- define "aicoe-spawner.tokenSecret" -}}
{{- default (include "aicoe-spawner.hub" .) .Values.hub.existingSecret -}}
{{- end -}}

{{/*
Checksum of some tokens, for a pod annotation: a changed token rolls the pods that use it.
Call with (list $ "key" "key" ...). With hub.existingSecret, of that Secret's name (restart the
pods yourself after changing its content).
*/}}
{{- define "aicoe-spawner.tokenChecksum" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.hub.existingSecret -}}
{{- $root.Values.hub.existingSecret | sha256sum -}}
{{- else -}}
{{- $tokens := include "aicoe-spawner.tokens" $root | fromJson -}}
{{- $parts := list -}}
{{- range $key := rest . -}}
{{- $parts = append $parts (include "aicoe-spawner.secretValue" (list $root $key (index $tokens $key))) -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}
{{- end -}}


{{/* Namespace of build Jobs: builder.buildNamespace, default "<release namespace>-builds". */}}
{{- define "aicoe-spawner.buildNamespace" -}}
{{- default (printf "%s-builds" .Release.Namespace | trunc 63 | trimSuffix "-") .Values.builder.buildNamespace -}}
{{- end -}}



{{/* Name of a cluster-scoped object of this release: "<namespace>.<fullname>-<suffix>". */}}
{{- define "aicoe-spawner.clusterName" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s-%s" $root.Release.Namespace (include "aicoe-spawner.fullname" $root) (index . 1) -}}
{{- end -}}

{{/* NetworkPolicy egress rule to the cluster DNS (networkPolicy.dns*). */}}
{{- define "aicoe-spawner.dnsEgress" -}}
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



{{/* A NetworkPolicy peer: the pods of this release's component (list $ "hub"). */}}
{{- define "aicoe-spawner.componentPeer" -}}
{{- $root := index . 0 -}}
- podSelector:
    matchLabels:
      {{- include "aicoe-spawner.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* A NetworkPolicy peer: the users' pods (KubeSpawner's component label and the chart's
common label). */}}
{{- define "aicoe-spawner.userPeer" -}}
- podSelector:
    matchLabels:
      component: singleuser-server
      app.kubernetes.io/part-of: aicoe-spawner
{{- end -}}

{{/* NetworkPolicy egress rule to public addresses (networkPolicy.privateRanges excepted). */}}
{{- define "aicoe-spawner.internetEgress" -}}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: {{ toJson .Values.networkPolicy.privateRanges }}
{{- end -}}

{{/* NetworkPolicy egress rule to the API server (builder.networkPolicy.apiServer*). */}}
{{- define "aicoe-spawner.apiServerEgress" -}}
{{- $np := .Values.builder.networkPolicy -}}
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
{{- define "aicoe-spawner.pullSecrets" -}}
{{- $refs := list -}}
{{- range . -}}
{{- $refs = append $refs (dict "name" .) -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}
