{{/* Labels of a component's objects: lotabots.labels (list . "operator") */}}
{{- define "lotabots.labels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: lotabots-{{ $component }}
app.kubernetes.io/component: {{ $component }}
app.kubernetes.io/part-of: lotabots
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ $root.Chart.Name }}-{{ $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Pod template labels: lotabots.podLabels "operator" */}}
{{- define "lotabots.podLabels" -}}
app.kubernetes.io/name: lotabots-{{ . }}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/part-of: lotabots
{{- end -}}

{{/* Image of a component: lotabots.image (list . "operator") */}}
{{- define "lotabots.image" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{ $root.Values.image.repository }}/{{ $component }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- end -}}

{{/* The restricted container securityContext every lotabots container runs with. */}}
{{- define "lotabots.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
capabilities:
  drop: ["ALL"]
{{- end -}}
