{{/* What the chart's jupyterhub_config.py reads: names of the other parts and hub.* values. */}}
{{- define "aicoe-spawner.hubValues" -}}
{{- $values := dict
  "namespace" .Release.Namespace
  "openshift" .Values.openshift.enabled
  "imageNamespaces" (include "aicoe-spawner.imageNamespaces" . | fromJsonArray)
  "hub" (dict
    "service" (include "aicoe-spawner.hub" .)
    "port" .Values.hub.service.port
    "config" .Values.hub.config
    "extraConfig" .Values.hub.extraConfig
    "services" .Values.hub.services
    "loadRoles" .Values.hub.loadRoles
    "db" .Values.hub.db)
  "cull" .Values.cull
  "proxy" (dict "apiService" (include "aicoe-spawner.proxyApi" .) "apiPort" 8001)
  "singleuser" .Values.singleuser
  "builder" (dict
    "enabled" .Values.builder.enabled
    "name" .Values.builder.serviceName
    "url" (printf "http://%s:%v" (include "aicoe-spawner.builder" .) .Values.builder.service.port)
    "builderGroups" .Values.builder.builderGroups
    "adminGroups" .Values.builder.adminGroups
    "destinations" (.Values.builder.destinations | default list))
-}}
{{- toPrettyJson $values -}}
{{- end -}}
