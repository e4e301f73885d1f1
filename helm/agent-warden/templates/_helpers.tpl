{{/* The chart name, for names and the app.kubernetes.io/name label. */}}
{{- define "agent-warden.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: at most 63 characters (DNS labels). */}}
{{- define "agent-warden.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := .Values.nameOverride | default .Chart.Name }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-warden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; each adds its app.kubernetes.io/component. */}}
{{- define "agent-warden.labels" -}}
helm.sh/chart: {{ include "agent-warden.chart" . }}
app.kubernetes.io/name: {{ include "agent-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-warden
{{- end }}

{{/* Labels that select the webhook pods: never change them on upgrade. */}}
{{- define "agent-warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "agent-warden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "agent-warden.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The webhook's Service: the name in the serving certificate's SANs. */}}
{{- define "agent-warden.serviceName" -}}
{{- include "agent-warden.fullname" . }}
{{- end }}

{{/* "<fullname>-<suffix>" within 63 characters; called with (dict "root" $ "suffix" "tls"). */}}
{{- define "agent-warden.suffixedName" -}}
{{- $room := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "agent-warden.fullname" .root | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{- define "agent-warden.tlsSecretName" -}}
{{- include "agent-warden.suffixedName" (dict "root" . "suffix" "tls") }}
{{- end }}

{{- define "agent-warden.injectorConfigName" -}}
{{- include "agent-warden.suffixedName" (dict "root" . "suffix" "injector") }}
{{- end }}

{{- define "agent-warden.certificateName" -}}
{{- include "agent-warden.suffixedName" (dict "root" . "suffix" "serving") }}
{{- end }}

{{/* The DNS names the API server uses to reach the webhook. */}}
{{- define "agent-warden.dnsNames" -}}
{{- $svc := include "agent-warden.serviceName" . }}
{{- list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson }}
{{- end }}

{{- define "agent-warden.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The ConfigMap the injected sidecars mount: an existing one or the chart's. */}}
{{- define "agent-warden.policyConfigMap" -}}
{{- .Values.policy.existingConfigMap | default .Values.policy.configMapName }}
{{- end }}

{{/* Namespaces the webhook configuration never selects: its own and kube-system first. */}}
{{- define "agent-warden.excludedNamespaces" -}}
{{- concat (list .Release.Namespace "kube-system") .Values.webhook.excludedNamespaces | uniq | toJson }}
{{- end }}

{{/*
The TLS material for tls.mode=generate, as YAML {caCert, tlsCert, tlsKey}: the
existing Secret's when there is one (so an upgrade keeps the CA the API server trusts),
else a new CA and a serving certificate it signs. Include it once per render.
*/}}
{{- define "agent-warden.generatedTLS" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "agent-warden.tlsSecretName" .) }}
{{- if and $secret $secret.data (hasKey $secret.data "ca.crt") (hasKey $secret.data "tls.crt") (hasKey $secret.data "tls.key") }}
caCert: {{ index $secret.data "ca.crt" | b64dec | quote }}
tlsCert: {{ index $secret.data "tls.crt" | b64dec | quote }}
tlsKey: {{ index $secret.data "tls.key" | b64dec | quote }}
{{- else }}
{{- $days := int .Values.tls.generate.validityDays }}
{{- $ca := genCA (include "agent-warden.suffixedName" (dict "root" . "suffix" "ca")) $days }}
{{- $dns := include "agent-warden.dnsNames" . | fromJsonArray }}
{{- /* CN: the Service name, as a full DNS name may pass the 64-character CN limit; SANs carry the names. */}}
{{- $cert := genSignedCert (include "agent-warden.serviceName" .) nil $dns $days $ca }}
caCert: {{ $ca.Cert | quote }}
tlsCert: {{ $cert.Cert | quote }}
tlsKey: {{ $cert.Key | quote }}
{{- end }}
{{- end }}

{{/* The fixed, restricted security context of every container the chart runs. */}}
{{- define "agent-warden.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "agent-warden.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* What both webhooks share; called with (dict "root" $ "tls" $generatedTLS). */}}
{{- define "agent-warden.webhookCommon" -}}
{{- $root := .root -}}
admissionReviewVersions: ["v1"]
sideEffects: None
failurePolicy: {{ $root.Values.webhook.failurePolicy }}
timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
reinvocationPolicy: {{ $root.Values.webhook.reinvocationPolicy }}
matchPolicy: Equivalent
clientConfig:
  service:
    name: {{ include "agent-warden.serviceName" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: /mutate
    port: {{ $root.Values.service.port }}
  {{- with .tls.caCert }}
  caBundle: {{ b64enc . }}
  {{- end }}
rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
{{- end }}

{{/*
An admin token, base64 for a Secret's data; called with (dict "found" $secret "key" $key),
$secret what lookup returned (empty under helm template): its token when it holds one,
else 48 random letters and digits.
*/}}
{{- define "agent-warden.adminToken" -}}
{{- $data := (.found | default dict).data | default dict }}
{{- $current := get $data .key }}
{{- if $current }}
{{- $current }}
{{- else }}
{{- randAlphaNum 48 | b64enc }}
{{- end }}
{{- end }}

{{/* The Secret holding the sidecars' admin token, "" when there is none. */}}
{{- define "agent-warden.adminTokenSecret" -}}
{{- if .Values.admin.token.enabled }}
{{- .Values.admin.tokenSecret.existing | default .Values.admin.tokenSecret.name }}
{{- end }}
{{- end }}

{{/*
Namespaces where the chart creates what injected pods read from their own namespace (the
policy ConfigMap, the admin-token and store Secrets): the release namespace (the
reference copy) and policy.namespaces, as a JSON list.
*/}}
{{- define "agent-warden.objectNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.policy.namespaces | uniq | toJson }}
{{- end }}

{{/*
The policy file as the ConfigMap holds it: policy.inline as given when it is a string
(byte for byte); the mapping (values.schema.json has checked it against the policy
schema) as JSON, which is YAML the sidecar reads exactly as meant (Go's YAML writer
leaves strings such as `=` plain, which the sidecar's YAML 1.1 reader takes for
something else; JSON quotes every string); the built-in policy when it is null.
*/}}
{{- define "agent-warden.policyText" -}}
{{- $inline := .Values.policy.inline }}
{{- if kindIs "string" $inline }}{{ $inline }}
{{- else if kindIs "map" $inline }}{{ toPrettyJson $inline }}{{ "\n" }}
{{- else }}{{ include "agent-warden.defaultPolicy" . }}
{{- end }}
{{- end }}

{{/* The policy when policy.inline is null (shown in values.yaml's comment; tests keep both alike). */}}
{{- define "agent-warden.defaultPolicy" -}}
version: 1
identity: {header: X-Agent-Id, required: false}
defaults:
  mode: enforce
  session: {ttl: 1h, idle_timeout: 15m, max_per_agent: 10}
  budget: {calls: 1000}
  rate_limit: {per_minute: 600}
  tools: {allow: ["*"], deny: ["*_admin"]}
  methods: {allow: ["*"], deny: []}
{{ end }}

{{/*
How the sidecar's preStop waits; called with (dict "action" $value "kubeVersion" $v).
auto: the kubelet's sleep action where the API server has it on by default (1.30+), else
an exec of the sidecar image's python3 (on 1.29 the sleep action is an alpha feature: a
pod using it would be refused).
*/}}
{{- define "agent-warden.preStopAction" -}}
{{- if ne .action "auto" }}{{ .action }}
{{- else if semverCompare ">=1.30.0-0" .kubeVersion }}sleep
{{- else }}exec
{{- end }}
{{- end }}

{{/* The webhook looks up the sidecar's objects (and needs an API token) unless missingObjects is inject. */}}
{{- define "agent-warden.lookups" -}}
{{- if ne .Values.injector.missingObjects "inject" }}true{{ end }}
{{- end }}

{{/* The Secrets and ConfigMaps an injected sidecar reads, for the webhook's role: (dict "secrets" [..] "configMaps" [..]) as JSON. */}}
{{- define "agent-warden.referencedObjects" -}}
{{- $configMaps := list (include "agent-warden.policyConfigMap" .) }}
{{- $secrets := list }}
{{- with include "agent-warden.adminTokenSecret" . }}
{{- $secrets = append $secrets . }}
{{- end }}
{{- with .Values.store.existingSecret | default (ternary .Values.store.secretName "" (ne .Values.store.url "")) }}
{{- $secrets = append $secrets . }}
{{- end }}
{{- range .Values.injector.env }}
{{- with .valueFrom }}
{{- with .secretKeyRef }}
{{- if .name }}{{ $secrets = append $secrets .name }}{{ end }}
{{- end }}
{{- with .configMapKeyRef }}
{{- if .name }}{{ $configMaps = append $configMaps .name }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- dict "secrets" ($secrets | uniq | sortAlpha) "configMaps" ($configMaps | uniq | sortAlpha) | toJson }}
{{- end }}
