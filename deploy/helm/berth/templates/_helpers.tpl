{{/* Names: the usual Helm conventions, cut to 63 characters (a label value's limit). */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-installer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "berth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The port of config.metricsAddress ("0.0.0.0:9810", "[::]:9810"). */}}
{{- define "berth.metricsPort" -}}
{{- regexReplaceAll "^.*:" .Values.config.metricsAddress "" }}
{{- end }}

{{/* "true" when something scrapes berthd from outside the node. */}}
{{- define "berth.scraped" -}}
{{- $m := .Values.metrics }}
{{- if and (ne .Values.action "uninstall") (or $m.service.enabled $m.serviceMonitor.enabled $m.podMonitor.enabled) }}true{{ end }}
{{- end }}

{{- define "berth.serviceName" -}}
{{- printf "%s-metrics" (include "berth.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Checks the values every template depends on; each template includes it, so a bad value fails
the render whichever file Helm reaches first.
*/}}
{{- define "berth.validate" -}}
{{- if not (has .Values.action (list "install" "uninstall")) }}
{{- fail (printf "action must be \"install\" or \"uninstall\", not %q" (toString .Values.action)) }}
{{- end }}
{{- $c := .Values.config }}
{{- if not (has $c.cgroupDriver (list "systemd" "cgroupfs")) }}
{{- fail (printf "config.cgroupDriver must be \"systemd\" or \"cgroupfs\", not %q" (toString $c.cgroupDriver)) }}
{{- end }}
{{- if not (has $c.logFormat (list "text" "json")) }}
{{- fail (printf "config.logFormat must be \"text\" or \"json\", not %q" (toString $c.logFormat)) }}
{{- end }}
{{- if not (has $c.defaultSeccomp (list "unconfined" "runtime/default")) }}
{{- fail (printf "config.defaultSeccomp must be \"unconfined\" or \"runtime/default\", not %q" (toString $c.defaultSeccomp)) }}
{{- end }}
{{- if not (kindIs "string" $c.metricsAddress) }}
{{- fail "config.metricsAddress must be a string (\"\" turns the endpoint off)" }}
{{- end }}
{{- if include "berth.scraped" . }}
{{- $addr := $c.metricsAddress }}
{{- if or (eq $addr "") (hasPrefix "127." $addr) (hasPrefix "[::1]" $addr) (hasPrefix "localhost" $addr) }}
{{- fail (printf "metrics.service, serviceMonitor or podMonitor is enabled, but config.metricsAddress %q cannot be reached from outside the node: set it to e.g. \"0.0.0.0:9810\"" $addr) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+$" (include "berth.metricsPort" .)) }}
{{- fail (printf "config.metricsAddress %q has no port" $addr) }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" $c.socketGid)) (not (include "berth.isInt" $c.socketGid)) }}
{{- fail (printf "config.socketGid must be a whole number or null, not %v" $c.socketGid) }}
{{- end }}
{{- if not (include "berth.isInt" $c.maxConcurrentDownloads) }}
{{- fail (printf "config.maxConcurrentDownloads must be a whole number, not %v" $c.maxConcurrentDownloads) }}
{{- end }}
{{- if and $c.extra (not (regexMatch "\\A(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*\\[" $c.extra)) }}
{{- fail "config.extra must start with a table header such as [streaming]: keys before one would land in the table above it" }}
{{- end }}
{{- range $k := list "root" "state" }}
{{- $v := index $c $k }}
{{- if and (not (kindIs "invalid" $v)) (not (and (kindIs "string" $v) (hasPrefix "/" $v))) }}
{{- fail (printf "config.%s must be an absolute path or null, not %v" $k $v) }}
{{- end }}
{{- end }}
{{- range $table := include "berth.configTables" . | splitList " " }}
{{- if regexMatch (printf "(?m)^[ \t]*\\[[ \t]*%s[ \t]*\\]" $table) $c.extra }}
{{- fail (printf "config.extra repeats the table [%s], which the chart writes from its values: set that key through the values, or leave the table out of extra" $table) }}
{{- end }}
{{- end }}
{{- range $host := keys .Values.registryHosts }}
{{- if hasKey $.Values.registryMirrors $host }}
{{- fail (printf "registry host %q is in both registryHosts and registryMirrors: give it in one of them" $host) }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" for a whole, non-negative number (values arrive as float64 or int64). */}}
{{- define "berth.isInt" -}}
{{- $v := . }}
{{- if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "float64" $v) }}
{{- if and (eq (float64 $v) (float64 (int64 $v))) (ge (int64 $v) 0) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The tables config.toml gets from the values, space-separated. */}}
{{- define "berth.configTables" -}}
{{- $tables := list "metrics" "log" "cni" "registry" "runtime" }}
{{- if not (kindIs "invalid" .Values.config.socketGid) }}
{{- $tables = prepend $tables "grpc" }}
{{- end }}
{{- join " " $tables }}
{{- end }}

{{/* berthd's config.toml. Strings and arrays are written as JSON, which TOML reads as is. */}}
{{- define "berth.configToml" -}}
{{- $c := .Values.config -}}
# Rendered by the berth Helm chart from its `config` values. Keys left out take berthd's
# defaults (`berthd config default`).
{{- with $c.root }}
root = {{ toJson . }}
{{- end }}
{{- with $c.state }}
state = {{ toJson . }}
{{- end }}
{{- if not (kindIs "invalid" $c.socketGid) }}

[grpc]
gid = {{ int64 $c.socketGid }}
{{- end }}

[metrics]
address = {{ toJson $c.metricsAddress }}

[log]
level = {{ toJson $c.logLevel }}
format = {{ toJson $c.logFormat }}

[cni]
conf_dir = {{ toJson $c.cni.confDir }}
bin_dirs = {{ include "berth.tomlArray" $c.cni.binDirs }}

[registry]
# Where the installer writes the registry host files.
config_path = "/etc/berth/certs.d"
max_concurrent_downloads = {{ int64 $c.maxConcurrentDownloads }}

[runtime]
cgroup_driver = {{ toJson $c.cgroupDriver }}
default_seccomp = {{ toJson $c.defaultSeccomp }}
{{- with $c.extra }}

{{ . | trim }}
{{- end }}
{{ end }}

{{/*
A ConfigMap key for a registry host. Keys allow only [-._a-zA-Z0-9], so the ':' before a port
becomes '_'; the volume's items put each key back at <host>/hosts.toml.
*/}}
{{- define "berth.hostKey" -}}
{{- if not (regexMatch "^[A-Za-z0-9_][-A-Za-z0-9._]*(:[0-9]+)?$" .) }}
{{- fail (printf "registry host %q is not a host name or host:port" .) }}
{{- end }}
{{- printf "%s.toml" (replace ":" "_" .) }}
{{- end }}

{{/* hosts.toml text for one entry of registryMirrors. */}}
{{- define "berth.mirrorHostsToml" -}}
{{- $host := .host }}
{{- $spec := .spec }}
{{- range $k, $_ := $spec }}
{{- if not (has $k (list "server" "mirrors")) }}
{{- fail (printf "registryMirrors.%s: unknown key %q (server, mirrors)" $host $k) }}
{{- end }}
{{- end }}
{{- with $spec.server }}
server = {{ toJson . }}
{{- end }}
{{- if not (kindIs "slice" (default list $spec.mirrors)) }}
{{- fail (printf "registryMirrors.%s.mirrors must be a list" $host) }}
{{- end }}
{{- range $i, $m := $spec.mirrors }}
{{- range $k, $_ := $m }}
{{- if not (has $k (list "url" "capabilities" "skipVerify" "ca" "overridePath")) }}
{{- fail (printf "registryMirrors.%s.mirrors[%d]: unknown key %q (url, capabilities, skipVerify, ca, overridePath)" $host $i $k) }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^https?://[^/]+" (toString $m.url)) }}
{{- fail (printf "registryMirrors.%s.mirrors[%d].url must be an http:// or https:// URL, not %q" $host $i (toString $m.url)) }}
{{- end }}
{{- range $k := list "skipVerify" "overridePath" }}
{{- if and (hasKey $m $k) (not (kindIs "bool" (get $m $k))) }}
{{- fail (printf "registryMirrors.%s.mirrors[%d].%s must be true or false" $host $i $k) }}
{{- end }}
{{- end }}
{{- $caps := default (list "pull" "resolve") $m.capabilities }}
{{- if not (kindIs "slice" $caps) }}
{{- fail (printf "registryMirrors.%s.mirrors[%d].capabilities must be a list" $host $i) }}
{{- end }}
{{- range $caps }}
{{- if not (has . (list "pull" "resolve" "push")) }}
{{- fail (printf "registryMirrors.%s.mirrors[%d].capabilities: %q is not pull, resolve or push" $host $i (toString .)) }}
{{- end }}
{{- end }}

[host.{{ toJson $m.url }}]
capabilities = {{ include "berth.tomlArray" $caps }}
skip_verify = {{ $m.skipVerify | default false }}
{{- with $m.ca }}
ca = {{ toJson . }}
{{- end }}
{{- if hasKey $m "overridePath" }}
override_path = {{ $m.overridePath }}
{{- end }}
{{- end }}
{{ end }}

{{/* Every registry host file: a map of host to hosts.toml text. */}}
{{- define "berth.registryHostFiles" -}}
{{- $files := dict }}
{{- range $host, $text := .Values.registryHosts }}
{{- if not (kindIs "string" $text) }}
{{- fail (printf "registryHosts.%s must be the text of a hosts.toml file" $host) }}
{{- end }}
{{- $_ := set $files $host (printf "%s\n" (trim $text)) }}
{{- end }}
{{- range $host, $spec := .Values.registryMirrors }}
{{- $_ := set $files $host (printf "%s\n" (include "berth.mirrorHostsToml" (dict "host" $host "spec" $spec) | trim)) }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* A TOML array of strings, written as JSON: ["a", "b"]. */}}
{{- define "berth.tomlArray" -}}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (toJson .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- end }}

{{/*
Text for a YAML literal block at .n spaces: nindent, but an empty line stays empty rather than
holding only spaces.
*/}}
{{- define "berth.block" -}}
{{- $pad := repeat .n " " }}
{{- range $line := splitList "\n" .text }}
{{ if $line }}{{ $pad }}{{ $line }}{{ end }}
{{- end }}
{{- end }}
