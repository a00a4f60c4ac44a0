{{/* Names, labels and the pieces the hub and the relay share. */}}

{{- define "hub.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: kubearc
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "hub.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hub.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hub.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "hub.containerSecurity" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Volumes both parts mount: the shared serving certificate and the relay registration key. */}}
{{- define "hub.secretVolumes" -}}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required (a kubernetes.io/tls Secret for publicUrl and relayUrl)" .Values.tls.existingSecret }}
- name: keys
  secret:
    secretName: {{ required "keys.existingSecret is required (encryption-key and relay-registration-key)" .Values.keys.existingSecret }}
    items:
      - key: relay-registration-key
        path: relay-registration-key
{{- end -}}

{{- define "hub.secretMounts" -}}
- name: tls
  mountPath: /etc/kubearc/tls
  readOnly: true
- name: keys
  mountPath: /etc/kubearc/keys
  readOnly: true
{{- end -}}

{{- define "hub.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}, scheme: HTTPS}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: {{ .ready }}, port: {{ .port }}, scheme: HTTPS}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}
