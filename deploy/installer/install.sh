#!/bin/sh
# berth's installer: puts berthd, its config, the registry host files and the systemd unit on a
# node, then has the node's systemd run it. The Helm chart's DaemonSet runs it in the installer
# image (the node's / at /host, host PID, privileged); the release tarball carries it for a hand
# install (BERTH_HOST_ROOT=/).
#
#   install.sh install     install or upgrade, (re)start berthd when something changed, wait
#                          until it answers; then stay running (the DaemonSet's pod) unless
#                          BERTH_ONESHOT=1
#   install.sh uninstall   stop and disable berthd, remove what install added (not
#                          /var/lib/berth, nor pods: drain the node first); then stay as above
#   install.sh health      exit 0 when the node's berthd answers on its CRI socket
#
# Environment:
#   BERTH_HOST_ROOT   where the node's / is (default /host; / for a hand install)
#   BERTH_CONFIG      the config.toml to install (default /etc/berth-install/config.toml, else
#                     the config.toml beside this script: berthd's defaults)
#   BERTH_CERTS_D     a directory of <registry host>/hosts.toml to install into
#                     /etc/berth/certs.d (default /etc/berth-install/certs.d)
#   BERTH_ONESHOT     1: return once done instead of staying running
#   BERTH_WAIT_SECS   how long to wait for berthd to answer after a (re)start (default 120)
#
# berthd is never stopped for an upgrade but restarted: its unit has KillMode=process, so pods
# and containers keep running and logging, and the new berthd takes them over.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
host=${BERTH_HOST_ROOT:-/host}
host=${host%/}
config=${BERTH_CONFIG:-/etc/berth-install/config.toml}
[ -f "$config" ] || config=$here/config.toml
certs=${BERTH_CERTS_D:-/etc/berth-install/certs.d}
wait_secs=${BERTH_WAIT_SECS:-120}

# Where things go on the node, and the list of what this installer put there.
bin=/usr/local/bin/berthd
unit=/etc/systemd/system/berthd.service
etc=/etc/berth
record_dir=/var/lib/berth-installer
record=$record_dir/installed

say() { echo "berth-install: $*"; }
die() { echo "berth-install: $*" >&2; exit 1; }

# Runs a command on the node: in its mount namespace (systemctl refuses to act from a chroot),
# through PID 1, which host PID makes ours to enter.
on_node() {
  if [ -z "$host" ]; then
    "$@"
  else
    nsenter -t 1 -m -- "$@"
  fi
}

# Copies $1 to the node's $2 with mode $3, through a temporary name and a rename, so that a
# reader never sees half a file (and a running berthd keeps its old binary). Says whether the
# content changed: 0 changed, 1 the same.
put() {
  if [ -f "$host$2" ] && cmp -s "$1" "$host$2"; then
    chmod "$3" "$host$2"
    return 1
  fi
  mkdir -p "$(dirname "$host$2")"
  cp "$1" "$host$2.berth-new"
  chmod "$3" "$host$2.berth-new"
  mv -f "$host$2.berth-new" "$host$2"
  return 0
}

remember() {
  grep -qxF "$1" "$host$record.new" 2>/dev/null || echo "$1" >>"$host$record.new"
}

health() {
  on_node "$bin" --config "$etc/config.toml" health --timeout-secs 5
}

wait_healthy() {
  waited=0
  until health >/dev/null 2>&1; do
    if [ "$waited" -ge "$wait_secs" ]; then
      health || true
      on_node systemctl status --no-pager berthd.service || true
      die "berthd did not answer within $wait_secs s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "$(health)"
}

install() {
  [ -x "$here/berthd" ] || die "no berthd beside $0"
  [ -f "$here/berthd.service" ] || die "no berthd.service beside $0"
  [ -f "$config" ] || die "no config: $config"
  [ -z "$host" ] || [ -d "$host/etc" ] || die "$host does not hold the node's / (set BERTH_HOST_ROOT)"
  [ -z "$host" ] || [ /proc/1/root/ -ef "$host/" ] ||
    die "PID 1 is not the node's init, whose / is $host: the pod needs hostPID"
  on_node systemctl --version >/dev/null 2>&1 || die "the node has no systemd (systemctl failed)"
  mkdir -p "$host$record_dir"
  : >"$host$record.new"

  # The new binary and config are checked on the node, with its libraries, before either
  # replaces what runs.
  mkdir -p "$host$etc"
  cp "$here/berthd" "$host$bin.berth-check"
  chmod 0755 "$host$bin.berth-check"
  cp "$config" "$host$etc/config.toml.berth-check"
  if ! on_node "$bin.berth-check" config check "$etc/config.toml.berth-check" >/dev/null; then
    on_node "$bin.berth-check" config check "$etc/config.toml.berth-check" || true
    rm -f "$host$bin.berth-check" "$host$etc/config.toml.berth-check"
    die "the new berthd refuses the config; nothing was changed"
  fi
  rm -f "$host$bin.berth-check" "$host$etc/config.toml.berth-check"

  restart=0 reload=0 unit_changed=0
  if put "$here/berthd" "$bin" 0755; then restart=1; say "installed $bin"; fi
  remember "$bin"
  if put "$config" "$etc/config.toml" 0644; then restart=1; say "installed $etc/config.toml"; fi
  remember "$etc/config.toml"
  if put "$here/berthd.service" "$unit" 0644; then
    restart=1 unit_changed=1
    say "installed $unit"
  fi
  remember "$unit"

  # Registry host files: the given ones, and those an earlier run installed and that are no
  # longer given removed. Files put there by hand are left alone.
  if [ -d "$certs" ]; then
    for file in "$certs"/*/hosts.toml; do
      [ -f "$file" ] || continue
      name=$(basename "$(dirname "$file")")
      if put "$file" "$etc/certs.d/$name/hosts.toml" 0644; then
        reload=1
        say "installed $etc/certs.d/$name/hosts.toml"
      fi
      remember "$etc/certs.d/$name/hosts.toml"
    done
  fi
  if [ -f "$host$record" ]; then
    while read -r old; do
      grep -qxF "$old" "$host$record.new" && continue
      rm -f "$host$old"
      rmdir "$(dirname "$host$old")" 2>/dev/null || true
      say "removed $old"
      reload=1
    done <"$host$record"
  fi
  mv -f "$host$record.new" "$host$record"

  [ "$unit_changed" = 1 ] && on_node systemctl daemon-reload
  on_node systemctl enable berthd.service >/dev/null 2>&1
  if [ "$restart" = 1 ] || ! on_node systemctl is-active --quiet berthd.service; then
    say "restarting berthd (pods keep running)"
    on_node systemctl restart berthd.service
  elif [ "$reload" = 1 ]; then
    say "reloading berthd (registry host files)"
    on_node systemctl reload berthd.service
  else
    say "nothing changed"
  fi
  wait_healthy
}

uninstall() {
  on_node systemctl disable --now berthd.service >/dev/null 2>&1 || true
  say "stopped and disabled berthd (its pods were left as they were)"
  if [ -f "$host$record" ]; then
    while read -r old; do
      rm -f "$host$old"
      say "removed $old"
    done <"$host$record"
    rmdir "$host$etc/certs.d"/* "$host$etc/certs.d" "$host$etc" 2>/dev/null || true
    rm -f "$host$record"
    rmdir "$host$record_dir" 2>/dev/null || true
  fi
  on_node systemctl daemon-reload
  say "uninstalled; /var/lib/berth is kept"
}

stay() {
  [ "${BERTH_ONESHOT:-}" = 1 ] && exit 0
  trap 'exit 0' TERM INT
  while :; do
    sleep 3600 &
    wait $! || true
  done
}

case "${1:-install}" in
  install) install; stay ;;
  uninstall) uninstall; stay ;;
  health) health ;;
  *) die "unknown command ${1}: install, uninstall or health" ;;
esac
