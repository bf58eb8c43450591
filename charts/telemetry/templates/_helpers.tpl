{{/*
telemetry.name: the chart name (or nameOverride), cut to 63 characters (the DNS label limit).
*/}}
{{- define "telemetry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
telemetry.fullname: the prefix of every resource name: fullnameOverride, else the release name when it
already contains the chart name, else `<release>-<chart>`; cut to 63 characters.
*/}}
{{- define "telemetry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.componentName: the name of one component's resources, `<fullname>-<component>`, cut to 63
characters. Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "telemetry.componentName" -}}
{{- printf "%s-%s" (include "telemetry.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{/*
telemetry.chart: chart name and version for the helm.sh/chart label.
*/}}
{{- define "telemetry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
telemetry.labels: the labels of every resource: the app.kubernetes.io/* set, helm.sh/chart and commonLabels.
*/}}
{{- define "telemetry.labels" -}}
helm.sh/chart: {{ include "telemetry.chart" . }}
{{ include "telemetry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "telemetry.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
telemetry.natsSelectorLabels: the labels of the in-chart NATS servers' pods (the official chart's).
*/}}
{{- define "telemetry.natsSelectorLabels" -}}
app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end -}}

{{/*
telemetry.selectorLabels: the labels that select this release's pods (never change them: selectors are
immutable). A component adds app.kubernetes.io/component.
*/}}
{{- define "telemetry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "telemetry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
telemetry.componentSelectorLabels: the selector labels of one component's pods.
Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "telemetry.componentSelectorLabels" -}}
{{ include "telemetry.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
telemetry.serviceAccountName: the ServiceAccount of the pods.
*/}}
{{- define "telemetry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "telemetry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.image: registry/repository:tag, or @digest when a digest is given.
*/}}
{{- define "telemetry.image" -}}
{{- $repository := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repository = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.natsFullname: the name the official NATS chart gives its client Service (its own
"nats.fullname" rule), for the in-chart NATS.
*/}}
{{- define "telemetry.natsFullname" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nats" .Values.nats.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.natsUrl: TELEMETRY_NATS_URLS as the chart computes it: the in-chart NATS Service, or the
external URLs joined by commas.
*/}}
{{- define "telemetry.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:%v" (include "telemetry.natsFullname" .) .Release.Namespace (dig "config" "nats" "port" 4222 .Values.nats | int) -}}
{{- else -}}
{{- join "," .Values.externalNats.urls -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.natsSecretName: the Secret holding TELEMETRY_NATS_URLS (the chart's, or natsConnection.existingSecret).
*/}}
{{- define "telemetry.natsSecretName" -}}
{{- if .Values.natsConnection.existingSecret -}}
{{- .Values.natsConnection.existingSecret -}}
{{- else -}}
{{- printf "%s-nats" (include "telemetry.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.natsSecretKey: the key of TELEMETRY_NATS_URLS in that Secret.
*/}}
{{- define "telemetry.natsSecretKey" -}}
{{- if .Values.natsConnection.existingSecret -}}
{{- .Values.natsConnection.existingSecretKey -}}
{{- else -}}
TELEMETRY_NATS_URLS
{{- end -}}
{{- end -}}

{{/*
telemetry.inChartNatsCluster: "true" when the in-chart NATS runs as a cluster, else empty.
*/}}
{{- define "telemetry.inChartNatsCluster" -}}
{{- if and .Values.nats.enabled (dig "config" "cluster" "enabled" false .Values.nats) -}}true{{- end -}}
{{- end -}}

{{/*
telemetry.streamReplicas: TELEMETRY_STREAM_REPLICAS: the value given, else 3 on the in-chart NATS
cluster (at most its size), else 1.
*/}}
{{- define "telemetry.streamReplicas" -}}
{{- if not (kindIs "invalid" .Values.telemetry.stream.replicas) -}}
{{- .Values.telemetry.stream.replicas | int -}}
{{- else if include "telemetry.inChartNatsCluster" . -}}
{{- min 3 (dig "config" "cluster" "replicas" 3 .Values.nats | int) -}}
{{- else -}}
1
{{- end -}}
{{- end -}}

{{/*
telemetry.settings: every TELEMETRY_* setting of the ConfigMap as a dict (name -> string), so the
ConfigMap, its checksum and the collision check with telemetry.extraEnv share one list.
Integers go through int64: Helm reads numbers as floats and would print 1073741824 as 1.073741824e+09.
*/}}
{{- define "telemetry.settings" -}}
{{- $t := .Values.telemetry -}}
{{- $settings := dict
  "TELEMETRY_NATS_CONNECT_TIMEOUT_S" (toString (int64 $t.natsConnectTimeoutS))
  "TELEMETRY_STREAM_NAME" $t.stream.name
  "TELEMETRY_SUBJECT_PREFIX" $t.stream.subjectPrefix
  "TELEMETRY_STREAM_MAX_AGE_S" (toString $t.stream.maxAgeS)
  "TELEMETRY_STREAM_MAX_BYTES" (toString (int64 $t.stream.maxBytes))
  "TELEMETRY_STREAM_MAX_MSGS_PER_SUBJECT" (toString (int64 $t.stream.maxMsgsPerSubject))
  "TELEMETRY_STREAM_REPLICAS" (include "telemetry.streamReplicas" .)
  "TELEMETRY_STREAM_DUPLICATE_WINDOW_S" (toString $t.stream.duplicateWindowS)
  "TELEMETRY_STREAM_STORAGE" $t.stream.storage
  "TELEMETRY_INGEST_HOST" $t.listenHost
  "TELEMETRY_INGEST_PORT" (toString (int64 .Values.ingest.containerPort))
  "TELEMETRY_STREAM_HOST" $t.listenHost
  "TELEMETRY_STREAM_PORT" (toString (int64 .Values.stream.containerPort))
  "TELEMETRY_FORWARDED_ALLOW_IPS" (include "telemetry.forwardedAllowIps" .)
  "TELEMETRY_REQUEST_HEAD_TIMEOUT_S" (toString $t.http.requestHeadTimeoutS)
  "TELEMETRY_MAX_REQUEST_HEAD_BYTES" (toString (int64 $t.http.maxRequestHeadBytes))
  "TELEMETRY_DISCARD_MAX_BYTES" (toString (int64 $t.http.discardMaxBytes))
  "TELEMETRY_DISCARD_TIMEOUT_S" (toString $t.http.discardTimeoutS)
  "TELEMETRY_MAX_BODY_BYTES" (toString (int64 $t.ingest.maxBodyBytes))
  "TELEMETRY_MAX_BATCH" (toString (int64 $t.ingest.maxBatch))
  "TELEMETRY_PUBLISH_TIMEOUT_S" (toString $t.ingest.publishTimeoutS)
  "TELEMETRY_MAX_INFLATED_BYTES" (toString (int64 $t.ingest.maxInflatedBytes))
  "TELEMETRY_MAX_IN_FLIGHT" (toString (int64 $t.ingest.maxInFlight))
  "TELEMETRY_INGEST_RATE_PER_DEVICE_PER_S" (toString $t.ingest.ratePerDevicePerS)
  "TELEMETRY_INGEST_BURST_PER_DEVICE" (toString (int64 $t.ingest.burstPerDevice))
  "TELEMETRY_INGEST_RATE_MAX_DEVICES" (toString (int64 $t.ingest.rateMaxDevices))
  "TELEMETRY_SHUTDOWN_GRACE_S" (toString (int64 $t.shutdownGraceS))
  "TELEMETRY_RETRY_AFTER_S" (toString (int64 $t.retryAfterS))
  "TELEMETRY_KEEPALIVE_S" (toString $t.sse.keepaliveS)
  "TELEMETRY_RETRY_MS" (toString (int64 $t.sse.retryMs))
  "TELEMETRY_MAX_PATTERNS" (toString (int64 $t.sse.maxPatterns))
  "TELEMETRY_MAX_REPLAY" (toString (int64 $t.sse.maxReplay))
  "TELEMETRY_LIVE_FEED_MAX_FILTERS" (toString (int64 $t.sse.liveFeedMaxFilters))
  "TELEMETRY_MAX_CONCURRENT_REPLAYS" (toString (int64 $t.sse.maxConcurrentReplays))
  "TELEMETRY_MAX_SNAPSHOT_TOPICS" (toString (int64 $t.sse.maxSnapshotTopics))
  "TELEMETRY_MAX_RATE_PER_S" (toString $t.sse.maxRatePerS)
  "TELEMETRY_MAX_EVENTS" (toString (int64 $t.sse.maxEvents))
  "TELEMETRY_MAX_LIFETIME_S" (toString $t.sse.maxLifetimeS)
  "TELEMETRY_MAX_CONNECTIONS" (toString (int64 $t.sse.maxConnections))
  "TELEMETRY_MAX_CONNECTIONS_PER_CLIENT" (toString (int64 $t.sse.maxConnectionsPerClient))
  "TELEMETRY_MAX_CONNECTS_PER_S" (toString $t.sse.maxConnectsPerS)
  "TELEMETRY_MAX_BUFFER_BYTES" (toString (int64 $t.sse.maxBufferBytes))
  "TELEMETRY_SLOW_CONSUMER_TIMEOUT_S" (toString $t.sse.slowConsumerTimeoutS)
  "TELEMETRY_MAX_PENDING_BYTES" (toString (int64 $t.sse.maxPendingBytes))
  "TELEMETRY_SSE_SEND_BUFFER_BYTES" (toString (int64 $t.sse.sendBufferBytes))
  "TELEMETRY_OVERLOAD_RETRY_MS" (toString (int64 $t.sse.overloadRetryMs))
  "TELEMETRY_LOG_LEVEL" $t.logLevel
  "TELEMETRY_LOG_FORMAT" $t.logFormat
  "TELEMETRY_AUTH" $t.auth.mode
  "TELEMETRY_JWT_AUDIENCE" $t.auth.jwt.audience
  "TELEMETRY_JWT_ISSUER" $t.auth.jwt.issuer
  "TELEMETRY_JWT_LEEWAY_S" (toString $t.auth.jwt.leewayS)
  "TELEMETRY_AUTH_QUERY_TOKEN" (toString $t.auth.queryToken)
  "TELEMETRY_AUTH_COOKIE_NAME" $t.auth.cookieName
  "TELEMETRY_CORS_ORIGINS" (join "," $t.corsOrigins)
  "TELEMETRY_DOCS" (toString $t.docs)
  "TELEMETRY_NATS_TLS_FIRST" (toString .Values.natsConnection.tls.first)
  "TELEMETRY_NATS_TLS_SERVER_NAME" .Values.natsConnection.tls.serverName
-}}
{{- range $file := include "telemetry.secretFiles" . | fromYamlArray -}}
{{- $_ := set $settings $file.setting (ternary $file.path "" $file.mounted) -}}
{{- end -}}
{{- range $name, $value := $t.extraEnv -}}
{{- if or (hasKey $settings $name) (eq $name "TELEMETRY_NATS_URLS") -}}
{{- fail (printf "telemetry.extraEnv.%s: this setting is managed by the chart; set its own value instead" $name) -}}
{{- end -}}
{{- $_ := set $settings $name (toString $value) -}}
{{- end -}}
{{- toYaml $settings -}}
{{- end -}}

{{/*
telemetry.minTerminationGrace: the shortest terminationGracePeriodSeconds a component may have: its
preStop sleep, then TELEMETRY_SHUTDOWN_GRACE_S (whole seconds, as uvicorn takes it), then 2 s for the
lifespan shutdown (closing the NATS connection) after uvicorn stops waiting.
Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "telemetry.minTerminationGrace" -}}
{{- $values := index .root.Values .component -}}
{{- add (int $values.preStopSleepSeconds) (int .root.Values.telemetry.shutdownGraceS) 2 -}}
{{- end -}}

{{/*
telemetry.validateValues: template-time failures for value combinations that cannot work; rendered
once, from the ConfigMap every installation has.
*/}}
{{- define "telemetry.validateValues" -}}
{{- $natsUrls := .Values.externalNats.urls | default list -}}
{{- if and (not .Values.nats.enabled) (empty $natsUrls) (not .Values.natsConnection.existingSecret) -}}
{{- fail "NATS: nats.enabled is false and there is no NATS to connect to: set externalNats.urls or natsConnection.existingSecret" -}}
{{- end -}}
{{- if and .Values.nats.enabled (not (empty $natsUrls)) -}}
{{- fail "NATS: both nats.enabled and externalNats.urls are set: use the in-chart NATS (leave externalNats.urls empty) or an external one (nats.enabled=false)" -}}
{{- end -}}
{{- if and .Values.nats.enabled (not (dig "config" "jetstream" "enabled" false .Values.nats)) -}}
{{- fail "NATS: nats.config.jetstream.enabled must be true: the services store readings in JetStream" -}}
{{- end -}}
{{- if .Values.nats.enabled -}}
{{- $servers := 1 -}}
{{- if include "telemetry.inChartNatsCluster" . -}}
{{- $servers = dig "config" "cluster" "replicas" 3 .Values.nats | int -}}
{{- end -}}
{{- if gt (include "telemetry.streamReplicas" . | int) $servers -}}
{{- fail (printf "telemetry.stream.replicas=%s cannot be placed on the in-chart NATS of %d server(s): JetStream needs a server per replica" (include "telemetry.streamReplicas" .) $servers) -}}
{{- end -}}
{{- end -}}
{{- $t := .Values.telemetry.stream -}}
{{- if and (gt (float64 $t.maxAgeS) 0.0) (gt (float64 $t.duplicateWindowS) (float64 $t.maxAgeS)) -}}
{{- fail (printf "telemetry.stream.duplicateWindowS (%v) must not exceed telemetry.stream.maxAgeS (%v): JetStream rejects such a stream" $t.duplicateWindowS $t.maxAgeS) -}}
{{- end -}}
{{- $i := .Values.telemetry.ingest -}}
{{- if and (gt (float64 $i.ratePerDevicePerS) 0.0) (lt (int64 $i.burstPerDevice) (int64 $i.maxBatch)) -}}
{{- fail (printf "telemetry.ingest.burstPerDevice (%v) must be at least telemetry.ingest.maxBatch (%v): a full batch from one device would never pass" $i.burstPerDevice $i.maxBatch) -}}
{{- end -}}
{{- range $component := list "ingest" "stream" -}}
{{- $values := index $.Values $component -}}
{{- if and $values.pdb.create (not (kindIs "invalid" $values.pdb.minAvailable)) (not (kindIs "invalid" $values.pdb.maxUnavailable)) -}}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable, not both" $component) -}}
{{- end -}}
{{- if and $values.pdb.create (kindIs "invalid" $values.pdb.minAvailable) (kindIs "invalid" $values.pdb.maxUnavailable) -}}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable (or pdb.create=false)" $component) -}}
{{- end -}}
{{- if $values.autoscaling.enabled -}}
{{- if gt (int $values.autoscaling.minReplicas) (int $values.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%v) is above maxReplicas (%v)" $component $values.autoscaling.minReplicas $values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- if and (kindIs "invalid" $values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" $values.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail (printf "%s.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" $component) -}}
{{- end -}}
{{- end -}}
{{- $minimum := include "telemetry.minTerminationGrace" (dict "root" $ "component" $component) | int -}}
{{- if lt (int $values.terminationGracePeriodSeconds) $minimum -}}
{{- fail (printf "%s.terminationGracePeriodSeconds=%v is shorter than preStopSleepSeconds (%v) + telemetry.shutdownGraceS (%v) + 2 s to close the NATS connection: the pod would be killed while draining; use at least %d" $component $values.terminationGracePeriodSeconds $values.preStopSleepSeconds $.Values.telemetry.shutdownGraceS $minimum) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.ingress.enabled (le (float64 .Values.ingress.streamProxyTimeoutS) (float64 .Values.telemetry.sse.keepaliveS)) -}}
{{- fail (printf "ingress.streamProxyTimeoutS (%v) must exceed telemetry.sse.keepaliveS (%v): the proxy would cut quiet streams before a keep-alive arrives" .Values.ingress.streamProxyTimeoutS .Values.telemetry.sse.keepaliveS) -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.forwardedAllowIps: the proxies whose X-Forwarded-For the services trust. Left empty, an Ingress makes it the
private ranges (the controller's pods are in one of them; a single trusted 127.0.0.1 would put every dashboard behind
the Ingress under one client address, and the 65th would be refused); without an Ingress, no proxy.
*/}}
{{- define "telemetry.forwardedAllowIps" -}}
{{- if .Values.telemetry.forwardedAllowIps -}}
{{- .Values.telemetry.forwardedAllowIps -}}
{{- else if .Values.ingress.enabled -}}
10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7
{{- else -}}
127.0.0.1
{{- end -}}
{{- end -}}

{{/*
telemetry.jwtSecretName: the Secret holding the HS256 secret: telemetry.auth.jwt.existingSecret, else the chart's own
`<fullname>-auth` when auth is required and no key source is given (a plain `helm install` then works), else empty.
*/}}
{{- define "telemetry.jwtSecretName" -}}
{{- $auth := .Values.telemetry.auth -}}
{{- if $auth.jwt.existingSecret -}}
{{- $auth.jwt.existingSecret -}}
{{- else if and (eq $auth.mode "required") (not $auth.jwt.publicKeysSecret) (not $auth.apiKeys.existingSecret) -}}
{{- printf "%s-auth" (include "telemetry.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/*
telemetry.secretFiles: every secret the services read from a file, as a list of {setting, path, secret, key, mounted}:
the file settings of the ConfigMap get the path when the secret is given (mounted), "" (unset) otherwise. Secrets are
mounted, never put in the environment: a projected volume follows their changes (key files are re-read).
*/}}
{{- define "telemetry.secretFiles" -}}
{{- $auth := .Values.telemetry.auth -}}
{{- $tls := .Values.natsConnection.tls -}}
{{- $creds := .Values.natsConnection.credentials -}}
{{- $jwtSecret := include "telemetry.jwtSecretName" . -}}
{{- $files := list
  (dict "setting" "TELEMETRY_JWT_SECRET_FILE" "path" "/etc/telemetry/auth/jwt-secret" "secret" $jwtSecret "key" $auth.jwt.existingSecretKey)
  (dict "setting" "TELEMETRY_JWT_PUBLIC_KEYS_FILE" "path" "/etc/telemetry/auth/jwt-public-keys" "secret" $auth.jwt.publicKeysSecret "key" $auth.jwt.publicKeysKey)
  (dict "setting" "TELEMETRY_API_KEYS_FILE" "path" "/etc/telemetry/auth/api-keys" "secret" $auth.apiKeys.existingSecret "key" $auth.apiKeys.existingSecretKey)
  (dict "setting" "TELEMETRY_NATS_TLS_CA_FILE" "path" "/etc/telemetry/nats/ca.crt" "secret" $tls.existingSecret "key" $tls.caKey)
  (dict "setting" "TELEMETRY_NATS_TLS_CERT_FILE" "path" "/etc/telemetry/nats/tls.crt" "secret" (ternary $tls.existingSecret "" $tls.clientCertificate) "key" $tls.certKey)
  (dict "setting" "TELEMETRY_NATS_TLS_KEY_FILE" "path" "/etc/telemetry/nats/tls.key" "secret" (ternary $tls.existingSecret "" $tls.clientCertificate) "key" $tls.keyKey)
  (dict "setting" "TELEMETRY_NATS_NKEY_SEED_FILE" "path" "/etc/telemetry/nats/user.nk" "secret" (ternary $creds.existingSecret "" (eq $creds.type "nkey")) "key" $creds.existingSecretKey)
  (dict "setting" "TELEMETRY_NATS_CREDS_FILE" "path" "/etc/telemetry/nats/user.creds" "secret" (ternary $creds.existingSecret "" (eq $creds.type "creds")) "key" $creds.existingSecretKey)
-}}
{{- range $files -}}
{{- $_ := set . "mounted" (ne .secret "") }}
- {{ toJson . }}
{{- end -}}
{{- end -}}

{{/*
telemetry.secretVolume: the projected volume of every mounted secret file (nothing when none is).
*/}}
{{- define "telemetry.secretVolume" -}}
{{- $sources := list -}}
{{- range $file := include "telemetry.secretFiles" . | fromYamlArray -}}
{{- if $file.mounted -}}
{{- $sources = append $sources (dict "secret" (dict "name" $file.secret "items" (list (dict "key" $file.key "path" (trimPrefix "/etc/telemetry/" $file.path))))) -}}
{{- end -}}
{{- end -}}
{{- if $sources -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- toYaml $sources | nindent 6 }}
{{- end -}}
{{- end -}}

{{/*
telemetry.alertLabels: the labels of one alert of the PrometheusRule: its severity, then
metrics.prometheusRule.additionalAlertLabels (the schema keeps severity out of those, so it stays the chart's).
Call with (dict "root" $ "severity" "critical").
*/}}
{{- define "telemetry.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.metrics.prometheusRule.additionalAlertLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
