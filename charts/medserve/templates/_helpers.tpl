{{/* The release's full name, at most 63 characters (a DNS-1123 label). */}}
{{- define "medserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "medserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "medserve.labels" -}}
{{ include "medserve.selectorLabels" . }}
app.kubernetes.io/part-of: medserve
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "medserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "medserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: repository@digest, else repository:tag (default appVersion). */}}
{{- define "medserve.image" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository ($image.tag | default $chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The labels of every model-runtime pod (the operator's render.model_deployment_labels). */}}
{{- define "medserve.runtimeSelector" -}}
app.kubernetes.io/name: medserve-model
app.kubernetes.io/managed-by: medserve
{{- end -}}
