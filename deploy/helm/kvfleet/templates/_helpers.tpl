{{/* Names and labels. */}}
{{- define "kvfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kvfleet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kvfleet.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvfleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The application's name in Serve: the cluster config's app_name (its default, kvfleet). */}}
{{- define "kvfleet.appName" -}}
{{- .Values.cluster.app_name | default "kvfleet" -}}
{{- end -}}

{{/* The pools that run: prefill and decode when both are set, else colocated. */}}
{{- define "kvfleet.pools" -}}
{{- $pools := .Values.cluster.pools | default dict -}}
{{- if and (hasKey $pools "prefill") (hasKey $pools "decode") -}}
prefill decode
{{- else -}}
colocated
{{- end -}}
{{- end -}}

{{/* A pool's settings from the cluster config (the colocated one may be left to its defaults). */}}
{{- define "kvfleet.poolConfig" -}}
{{- $pools := .root.Values.cluster.pools | default dict -}}
{{- toYaml (get $pools .pool | default dict) -}}
{{- end -}}

{{/* GPUs (ranks) one replica of a pool takes: tensor x pipeline. */}}
{{- define "kvfleet.gpusPerReplica" -}}
{{- $pool := include "kvfleet.poolConfig" . | fromYaml -}}
{{- $parallel := $pool.parallelism | default dict -}}
{{- mul ($parallel.tensor | default 1) ($parallel.pipeline | default 1) -}}
{{- end -}}

{{- define "kvfleet.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "kvfleet.fullname" . }}-redis:6379/0
{{- else -}}
{{- .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "kvfleet.rayHead" -}}
{{- if eq .Values.ray.mode "kuberay" -}}
{{ include "kvfleet.fullname" . }}-head-svc
{{- else -}}
{{ include "kvfleet.fullname" . }}-ray-head
{{- end -}}
{{- end -}}

{{/* The cluster config Serve builds the application from: the values' own, with the Redis
URL this release provides (the password, if any, reaches the pods as an environment variable),
and without the default colocated pool when prefill and decode pools replace it. */}}
{{- define "kvfleet.clusterConfig" -}}
{{- $cluster := deepCopy .Values.cluster -}}
{{- if eq (include "kvfleet.pools" .) "prefill decode" -}}
{{- $_ := unset $cluster.pools "colocated" -}}
{{- end -}}
{{- $pools := $cluster.pools | default dict -}}
{{- $_ := set $cluster "pools" $pools -}}
{{- range $name := splitList " " (include "kvfleet.pools" .) -}}
{{- $pool := get $pools $name | default dict -}}
{{- /* Ranks take GPUs, and each replica lands on its own pool's pods (kvfleet.poolResource). */ -}}
{{- $_ := set $pool "accelerator" ($pool.accelerator | default "gpu") -}}
{{- $resources := $pool.ray_resources | default dict -}}
{{- $_ := set $resources (include "kvfleet.poolResource" $name) 1 -}}
{{- $_ := set $pool "ray_resources" $resources -}}
{{- $_ := set $pools $name $pool -}}
{{- end -}}
{{- $url := include "kvfleet.redisUrl" . -}}
{{- $_ := set $cluster "redis" (dict "url" (ternary $url nil (ne $url ""))) -}}
{{- toYaml $cluster -}}
{{- end -}}

{{/* Ray Serve's declarative config: the one application, built by cluster.app:app_builder. */}}
{{- define "kvfleet.serveConfig" -}}
proxy_location: Disabled
applications:
  - name: {{ include "kvfleet.appName" . }}
    import_path: cluster.app:app_builder
    route_prefix: null
    args:
{{ include "kvfleet.clusterConfig" . | indent 6 }}
{{- end -}}

{{/* Environment every kvfleet container gets. */}}
{{- define "kvfleet.env" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.existingSecret }}
- name: KVFLEET_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.passwordKey }}
{{- end }}
{{- with .Values.redis.tls.existingSecret }}
- name: KVFLEET_REDIS_TLS_CA_FILE
  value: /etc/kvfleet/redis-tls/ca.crt
{{- if $.Values.redis.tls.clientCertificate }}
- name: KVFLEET_REDIS_TLS_CERT_FILE
  value: /etc/kvfleet/redis-tls/tls.crt
- name: KVFLEET_REDIS_TLS_KEY_FILE
  value: /etc/kvfleet/redis-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.hfToken.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hfToken.existingSecret }}
      key: {{ .Values.hfToken.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes of a Ray pod: the model cache, /dev/shm, and any extra. */}}
{{- define "kvfleet.rayVolumes" -}}
{{- if .Values.modelCache.enabled }}
- name: model-cache
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim | default (printf "%s-model-cache" (include "kvfleet.fullname" .)) }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
{{- include "kvfleet.redisTLSVolume" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kvfleet.rayVolumeMounts" -}}
{{- if .Values.modelCache.enabled }}
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
{{- end }}
- name: dshm
  mountPath: /dev/shm
{{- include "kvfleet.redisTLSVolumeMount" . }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The TLS files of an external rediss:// Redis, from an existing Secret (ca.crt, and
tls.crt and tls.key for mutual TLS), in every pod that talks to Redis. */}}
{{- define "kvfleet.redisTLSVolume" -}}
{{- with .Values.redis.tls.existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{- define "kvfleet.redisTLSVolumeMount" -}}
{{- if .Values.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/kvfleet/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* A Ray worker container's resources for one replica of a pool. */}}
{{- define "kvfleet.workerResources" -}}
{{- $k8s := get .root.Values.pools .pool -}}
{{- $gpus := include "kvfleet.gpusPerReplica" . | int -}}
requests:
  cpu: {{ mul $gpus $k8s.cpusPerGpu | quote }}
  memory: {{ printf "%dGi" (mul $gpus (trimSuffix "Gi" $k8s.memoryPerGpu | int)) }}
  {{ $k8s.gpuResource }}: {{ $gpus }}
limits:
  memory: {{ printf "%dGi" (mul $gpus (trimSuffix "Gi" $k8s.memoryPerGpu | int)) }}
  {{ $k8s.gpuResource }}: {{ $gpus }}
{{- end -}}


{{/* The custom Ray resource a pool's pods offer and its replicas and ranks ask for. */}}
{{- define "kvfleet.poolResource" -}}
{{- printf "kvfleet_pool_%s" . -}}
{{- end -}}

{{/* What one pod of a pool offers of that resource: the replica's actor and each rank. */}}
{{- define "kvfleet.poolResources" -}}
{{- $gpus := include "kvfleet.gpusPerReplica" . | int -}}
{{- printf "{\"%s\": %d}" (include "kvfleet.poolResource" .pool) (add $gpus 1) -}}
{{- end -}}
