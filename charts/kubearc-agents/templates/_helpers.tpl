{{/* Names and labels shared by every object of the chart. */}}

{{- define "kubearc.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubearc.labels" -}}
app.kubernetes.io/name: {{ include "kubearc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: kubearc
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubearc.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kubearc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The hub CA, plus a TLS-inspecting proxy's CA: one bundle every agent verifies with. */}}
{{- define "kubearc.trust" -}}
{{- if or .Values.hub.caCert .Values.proxy.caCert -}}true{{- end -}}
{{- end -}}

{{- define "kubearc.env" -}}
- name: KUBEARC_HUB_URL
  value: {{ required "hub.url is required (the URL the cluster reaches the hub at)" .Values.hub.url | quote }}
{{- if include "kubearc.trust" . }}
- name: KUBEARC_HUB_CA
  value: /etc/kubearc/trust/ca.crt
- name: SSL_CERT_FILE
  value: /etc/kubearc/trust/ca.crt
{{- end }}
- name: KUBEARC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: KUBEARC_PROBES_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.probesPort) | quote }}
{{- with .Values.proxy.https }}
- name: HTTPS_PROXY
  value: {{ . | quote }}
- name: https_proxy
  value: {{ . | quote }}
- name: NO_PROXY
  value: {{ $.Values.proxy.noProxy | quote }}
- name: no_proxy
  value: {{ $.Values.proxy.noProxy | quote }}
{{- end }}
{{- end -}}

{{- define "kubearc.trustVolume" -}}
{{- if include "kubearc.trust" . }}
- name: trust
  configMap:
    name: kubearc-trust
{{- end }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- end -}}

{{- define "kubearc.trustMount" -}}
{{- if include "kubearc.trust" . }}
- name: trust
  mountPath: /etc/kubearc/trust
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "kubearc.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kubearc.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "kubearc.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: probes}
  periodSeconds: 20
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: probes}
  periodSeconds: 10
{{- end -}}

{{/* One agent's Deployment: one replica running `kubearc <args>` from the chart's image.
  dict: root, agent, args (list), resources (key of .Values.resources), and optionally
  env (YAML list), volumes and mounts (YAML lists), ports (YAML list). */}}
{{- define "kubearc.deployment" -}}
{{- $root := .root -}}
{{- $tag := .tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubearc-{{ .agent }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kubearc.labels" (dict "root" $root "component" .agent) | nindent 4 }}
spec:
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "kubearc.selector" (dict "root" $root "component" .agent) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kubearc.labels" (dict "root" $root "component" .agent) | nindent 8 }}
    spec:
      serviceAccountName: kubearc-{{ .agent }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "kubearc.podSecurity" $root | nindent 8 }}
      containers:
        - name: {{ .agent }}
          image: {{ printf "%s:%s" $root.Values.image.repository $tag | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "kubearc.env" $root | nindent 12 }}
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: KUBEARC_AGENT_VERSION  # what this agent reports as the cluster's agent version
              value: {{ $tag | quote }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
          ports:
            - name: probes
              containerPort: {{ $root.Values.probesPort }}
              protocol: TCP
            {{- with .ports }}
            {{- . | nindent 12 }}
            {{- end }}
          {{- include "kubearc.probes" $root | nindent 10 }}
          resources:
            {{- toYaml (get $root.Values.resources .resources) | nindent 12 }}
          securityContext:
            {{- include "kubearc.containerSecurity" $root | nindent 12 }}
          volumeMounts:
            {{- include "kubearc.trustMount" $root | nindent 12 }}
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "kubearc.trustVolume" $root | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}
