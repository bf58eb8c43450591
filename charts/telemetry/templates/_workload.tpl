{{/*
The ingest and stream services run the same image with the same settings, probes and security; only
the subcommand, the port and their values differ. These named templates render one component's
resources so both stay alike; each resource still has its own file (deployment-ingest.yaml, ...).
Call each with (dict "root" $ "component" "ingest").
*/}}

{{/*
telemetry.deployment: the Deployment of one component (`telemetry <component>`).
*/}}
{{- define "telemetry.deployment" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $values := index $root.Values $component -}}
{{- $name := include "telemetry.componentName" . -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "telemetry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ $values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 10
  strategy:
    {{- toYaml $values.updateStrategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "telemetry.componentSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "telemetry.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- /* A settings change rolls the pods: they read the environment only at start. */}}
        checksum/config: {{ include "telemetry.settings" $root | sha256sum }}
        {{- if not $root.Values.natsConnection.existingSecret }}
        checksum/nats: {{ include "telemetry.natsUrl" $root | sha256sum }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "telemetry.serviceAccountName" $root }}
      {{- /* The services never call the Kubernetes API. */}}
      automountServiceAccountToken: false
      {{- /* Service links would inject TELEMETRY_INGEST_PORT=tcp://... for a release named "telemetry". */}}
      enableServiceLinks: false
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- if $root.Values.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $root.Values.topologySpread.topologyKeys }}
        - topologyKey: {{ . }}
          maxSkew: {{ $root.Values.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "telemetry.componentSelectorLabels" (dict "root" $root "component" $component) | nindent 14 }}
          {{- /* Only the pods of the same ReplicaSet count, so a rollout does not skew against old pods. */}}
          matchLabelKeys:
            - pod-template-hash
        {{- end }}
      {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "telemetry.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- /* The image's ENTRYPOINT is `telemetry`; the argument picks the service. */}}
          args:
            - {{ $component }}
          ports:
            - name: http
              containerPort: {{ $values.containerPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "telemetry.fullname" $root }}
          env:
            - name: TELEMETRY_NATS_URLS
              valueFrom:
                secretKeyRef:
                  name: {{ include "telemetry.natsSecretName" $root }}
                  key: {{ include "telemetry.natsSecretKey" $root }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ $values.livenessProbe.periodSeconds }}
            timeoutSeconds: {{ $values.livenessProbe.timeoutSeconds }}
            failureThreshold: {{ $values.livenessProbe.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: {{ $values.readinessProbe.periodSeconds }}
            timeoutSeconds: {{ $values.readinessProbe.timeoutSeconds }}
            failureThreshold: {{ $values.readinessProbe.failureThreshold }}
          {{- if gt (int $values.preStopSleepSeconds) 0 }}
          {{- /* Keep serving while the endpoint is removed from Services and Ingresses, then drain on SIGTERM. */}}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $values.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if include "telemetry.secretVolume" $root }}
            - name: secrets
              mountPath: /etc/telemetry
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpVolumeSizeLimit }}
        {{- include "telemetry.secretVolume" $root | nindent 8 }}
{{- end -}}

{{/*
telemetry.service: the Service of one component, port "http".
*/}}
{{- define "telemetry.service" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $values := index $root.Values $component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "telemetry.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "telemetry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
  {{- with $values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "telemetry.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.service.port }}
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- end -}}

{{/*
telemetry.hpa: the HorizontalPodAutoscaler of one component, when its autoscaling is enabled.
*/}}
{{- define "telemetry.hpa" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $autoscaling := (index $root.Values $component).autoscaling -}}
{{- if $autoscaling.enabled -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "telemetry.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "telemetry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "telemetry.componentName" . }}
  minReplicas: {{ $autoscaling.minReplicas }}
  maxReplicas: {{ $autoscaling.maxReplicas }}
  metrics:
    {{- with $autoscaling.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  {{- with $autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/*
telemetry.pdb: the PodDisruptionBudget of one component, when pdb.create.
*/}}
{{- define "telemetry.pdb" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $pdb := (index $root.Values $component).pdb -}}
{{- if $pdb.create -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "telemetry.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "telemetry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  {{- if not (kindIs "invalid" $pdb.minAvailable) }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "telemetry.componentSelectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{/*
telemetry.ingress: the Ingress of one component's path on the shared host. Two Ingress objects, not
one: ingress-nginx applies an Ingress's annotations to all its paths, and only the stream path wants
buffering off and hour-long timeouts (the ingest path wants the body limit). ingress-nginx merges
both objects into one server block for the host.
Call with (dict "root" $ "component" "stream" "path" "/v1/stream" "nginx" (dict ...annotations)).
*/}}
{{- define "telemetry.ingress" -}}
{{- $root := .root -}}
{{- $ingress := $root.Values.ingress -}}
{{- $annotations := dict -}}
{{- if $ingress.nginxAnnotations -}}
{{- $annotations = merge $annotations .nginx -}}
{{- end -}}
{{- $annotations = merge (deepCopy $ingress.annotations) $annotations -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "telemetry.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "telemetry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- if $ingress.tls.enabled }}
  tls:
    - hosts:
        - {{ $ingress.hostname | quote }}
      secretName: {{ default (printf "%s-tls" (include "telemetry.fullname" $root | trunc 59 | trimSuffix "-")) $ingress.tls.secretName }}
  {{- end }}
  rules:
    - host: {{ $ingress.hostname | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ . }}
            pathType: {{ and (hasSuffix "/" .) (ne . "/") | ternary "Prefix" "Exact" }}
            backend:
              service:
                name: {{ include "telemetry.componentName" $ }}
                port:
                  name: http
          {{- end }}
{{- end -}}
