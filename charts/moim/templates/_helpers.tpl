{{/* Name of the chart's objects. */}}
{{- define "moim.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "moim.labels" -}}
app.kubernetes.io/name: moim
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of the operator pods. */}}
{{- define "moim.operatorSelector" -}}
app.kubernetes.io/name: moim
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "moim.nodeSecret" -}}
{{- default "moim-node-secrets" .Values.secrets.existingNodeSecret -}}
{{- end -}}

{{- define "moim.apiKeySecret" -}}
{{- default (printf "%s-api-keys" (include "moim.fullname" .)) .Values.secrets.existingApiKeySecret -}}
{{- end -}}

{{- define "moim.relaySecret" -}}
{{- if eq .Values.relay.tls.source "existing" -}}
{{- required "relay.tls.existingSecret is needed with relay.tls.source=existing" .Values.relay.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-relay-tls" (include "moim.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- /* `REGION=URL,...` for the operator's MOIM_TURN_URLS ("*" entries become bare URLs). */ -}}
{{- define "moim.turnUrls" -}}
{{- $out := list -}}
{{- range $region, $url := .Values.turn.urls -}}
{{- if eq $region "*" -}}{{- $out = append $out $url -}}{{- else -}}{{- $out = append $out (printf "%s=%s" $region $url) -}}{{- end -}}
{{- end -}}
{{- required "turn.urls needs the TURN server's URL per region when turn.enabled" (join "," $out | default nil) -}}
{{- end -}}
