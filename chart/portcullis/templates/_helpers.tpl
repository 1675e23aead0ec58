{{/*
Names. Kubernetes names are limited to 63 characters (DNS labels).
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "portcullis.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.configSecretName" -}}
{{- default (include "portcullis.fullname" .) .Values.configSecret.name }}
{{- end }}

{{- define "portcullis.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "portcullis.fullname" .)) .Values.https.tls.secretName }}
{{- end }}

{{- define "portcullis.caConfigMapName" -}}
{{- default (printf "%s-ca" (include "portcullis.fullname" .)) .Values.https.tls.caConfigMap.name }}
{{- end }}

{{- define "portcullis.pvcName" -}}
{{- default (printf "%s-data" (include "portcullis.fullname" .)) .Values.storage.sqlite3.persistence.existingClaim }}
{{- end }}

{{/*
repository:tag[@digest]; the digest wins when both are given, which is the point of pinning.
*/}}
{{- define "portcullis.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "portcullis.testImage" -}}
{{- $img := .Values.helmTest.image }}
{{- if $img.digest }}
{{- printf "%s:%s@%s" $img.repository $img.tag $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository $img.tag }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the pod needs a Kubernetes API token. */}}
{{- define "portcullis.needsAPI" -}}
{{- if and .Values.tokenReviewWebhook.enabled .Values.tokenReviewWebhook.authenticateCallers }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the sqlite database lives on a claim. */}}
{{- define "portcullis.sqlitePVC" -}}
{{- if and (eq .Values.storage.type "sqlite3") .Values.storage.sqlite3.persistence.enabled }}true{{ end }}
{{- end }}

{{/* Host of the issuer URL without a port (for certificate names). */}}
{{- define "portcullis.issuerHost" -}}
{{- $host := (urlParse (.Values.config.issuer | default "")).host | default "" }}
{{- regexReplaceAll ":[0-9]+$" $host "" }}
{{- end }}

{{/* In-cluster DNS names of the Service, plus the issuer host and user-supplied names. */}}
{{- define "portcullis.tlsDNSNames" -}}
{{- $fullname := include "portcullis.fullname" . }}
{{- $ns := include "portcullis.namespace" . }}
{{- $names := list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.%s" $fullname $ns .Values.clusterDomain) }}
{{- $issuerHost := include "portcullis.issuerHost" . }}
{{- if and $issuerHost (not (regexMatch "^[0-9.]+$|^\\[" $issuerHost)) }}
{{- $names = append $names $issuerHost }}
{{- end }}
{{- concat $names .Values.https.tls.dnsNames | uniq | toJson }}
{{- end }}

{{/*
Storage section rendered from .Values.storage (Dex's format).
*/}}
{{- define "portcullis.storageConfig" -}}
{{- $s := .Values.storage }}
{{- if eq $s.type "memory" }}
{{- dict "type" "memory" | toJson }}
{{- else if eq $s.type "sqlite3" }}
{{- dict "type" "sqlite3" "config" (dict "file" "/var/lib/portcullis/portcullis.db") | toJson }}
{{- else if eq $s.type "postgres" }}
{{- $pg := $s.postgres }}
{{- $password := $pg.password }}
{{- if $pg.existingSecret.name }}
{{- $password = "$PORTCULLIS_STORAGE_PASSWORD" }}
{{- end }}
{{- $ssl := dict "mode" $pg.ssl.mode }}
{{- if $pg.ssl.caFile }}
{{- $_ := set $ssl "caFile" $pg.ssl.caFile }}
{{- end }}
{{- $cfg := dict "host" $pg.host "port" (int $pg.port) "database" $pg.database "user" $pg.user "password" $password "ssl" $ssl }}
{{- dict "type" "postgres" "config" $cfg | toJson }}
{{- end }}
{{- end }}

{{/*
The issuer's config.yaml: the user's `config` with the parts the chart owns (listen addresses,
TLS paths, storage, Kubernetes features) set so that ports, probes and volumes always agree.
*/}}
{{- define "portcullis.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $web := deepCopy (get $cfg "web" | default dict) }}
{{- if .Values.https.enabled }}
{{- $_ := unset $web "http" }}
{{- $_ := set $web "https" "0.0.0.0:5554" }}
{{- $_ := set $web "tlsCert" "/etc/portcullis/tls/tls.crt" }}
{{- $_ := set $web "tlsKey" "/etc/portcullis/tls/tls.key" }}
{{- else }}
{{- $_ := set $web "http" "0.0.0.0:5556" }}
{{- $_ := unset $web "https" }}
{{- $_ := unset $web "tlsCert" }}
{{- $_ := unset $web "tlsKey" }}
{{- end }}
{{- $_ := set $cfg "web" $web }}
{{- $telemetry := deepCopy (get $cfg "telemetry" | default dict) }}
{{- $_ := set $telemetry "http" "0.0.0.0:5558" }}
{{- $_ := set $cfg "telemetry" $telemetry }}
{{- if .Values.grpc.enabled }}
{{- $grpc := deepCopy (get $cfg "grpc" | default dict) }}
{{- $_ := set $grpc "addr" "0.0.0.0:5557" }}
{{- if .Values.https.enabled }}
{{- /* The admin API refuses plaintext off loopback: reuse the serving certificate. Without
https.enabled the user sets config.grpc.tlsCert/tlsKey (own volume) or allowInsecure. */}}
{{- $_ := set $grpc "tlsCert" "/etc/portcullis/tls/tls.crt" }}
{{- $_ := set $grpc "tlsKey" "/etc/portcullis/tls/tls.key" }}
{{- end }}
{{- $_ := set $cfg "grpc" $grpc }}
{{- else }}
{{- $_ := unset $cfg "grpc" }}
{{- end }}
{{- $_ := set $cfg "storage" (include "portcullis.storageConfig" . | fromJson) }}
{{- if include "portcullis.sealing" . }}
{{- if hasKey $cfg "storageSealing" }}
{{- fail "config.storageSealing: the chart sets it from storageSealing (a key Secret it mounts); set storageSealing.enabled=false to manage it yourself" }}
{{- end }}
{{- $_ := set $cfg "storageSealing" (include "portcullis.sealingConfig" . | fromJson) }}
{{- end }}
{{- $kube := dict }}
{{- if .Values.kubeconfigPage.enabled }}
{{- $_ := set $kube "kubeconfigPage" (dict "enabled" true "clientID" .Values.kubeconfigPage.clientID "clusters" .Values.kubeconfigPage.clusters) }}
{{- end }}
{{- if .Values.tokenReviewWebhook.enabled }}
{{- $audiences := .Values.tokenReviewWebhook.audiences | default (list .Values.kubeconfigPage.clientID) }}
{{- $_ := set $kube "tokenReview" (dict "enabled" true "addr" "0.0.0.0:5559" "path" "/tokenreview" "tlsCert" "/etc/portcullis/tls/tls.crt" "tlsKey" "/etc/portcullis/tls/tls.key" "audiences" $audiences "authenticateCallers" .Values.tokenReviewWebhook.authenticateCallers) }}
{{- end }}
{{- if $kube }}
{{- $_ := set $cfg "kubernetes" $kube }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Storage sealing (storageSealing): on for sqlite3 and postgres when enabled ("true" or "").
*/}}
{{- define "portcullis.sealing" -}}
{{- if and .Values.storageSealing.enabled (ne .Values.storage.type "memory") }}true{{ end }}
{{- end }}

{{- define "portcullis.sealingSecretName" -}}
{{- default (printf "%s-sealing" (include "portcullis.fullname" .)) .Values.storageSealing.existingSecret.name }}
{{- end }}

{{/*
The config's storageSealing section: key files in the mounted Secret.
*/}}
{{- define "portcullis.sealingConfig" -}}
{{- $s := .Values.storageSealing }}
{{- $dir := "/etc/portcullis/sealing" }}
{{- $current := ternary $s.existingSecret.key "key" (ne $s.existingSecret.name "") }}
{{- $cfg := dict "keyFile" (printf "%s/%s" $dir $current) }}
{{- if $s.previousKeys }}
{{- $previous := list }}
{{- range $s.previousKeys }}
{{- $previous = append $previous (printf "%s/%s" $dir .) }}
{{- end }}
{{- $_ := set $cfg "previousKeyFiles" $previous }}
{{- end }}
{{- toJson $cfg }}
{{- end }}
