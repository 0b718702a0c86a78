#!/bin/sh
# make node-install: a hand install of the release tarball onto the node lane's VM (systemd as
# PID 1, pure cgroup v2), with the install.sh the chart's DaemonSet runs. In the VM: check the
# tarball's SHA256SUMS, install, show berthd running under systemd and answering on its socket,
# run install again (nothing changes), reload, then uninstall. The VM is thrown away after.
#
#   try-install.sh <release tarball>
#
# Needs root, like lane.sh, which boots the VM (NODE_EXTRA_DIR, no suites).
set -eu
tarball=$1
[ -f "$tarball" ] || { echo "try-install: no tarball $tarball (make dist makes it)" >&2; exit 1; }
cd "$(dirname "$0")/../.."

extra=$(mktemp -d "${TMPDIR:-/var/tmp}/berth-try-install.XXXXXX")
trap 'rm -rf "$extra"' EXIT INT TERM
cp "$tarball" "$extra/"
cat >"$extra/run" <<'RUN'
#!/bin/sh
# Runs in the VM (e2e/node/try-install.sh): what docs/operations.md's hand install says.
set -eux
cd "$(mktemp -d)"
tar xzf /opt/berth-node/extra/berth-*.tar.gz
cd berth-*/
sha256sum -c SHA256SUMS
BERTH_HOST_ROOT=/ BERTH_CONFIG=./config.toml BERTH_ONESHOT=1 ./install.sh install
systemctl show -p Type -p ActiveState -p MainPID -p KillMode berthd.service
systemctl is-enabled berthd.service
berthd version
berthd health
BERTH_HOST_ROOT=/ BERTH_CONFIG=./config.toml BERTH_ONESHOT=1 ./install.sh install
systemctl reload berthd.service
berthd health
journalctl -u berthd.service --no-pager -n 20
BERTH_HOST_ROOT=/ BERTH_ONESHOT=1 ./install.sh uninstall
if systemctl is-active --quiet berthd.service; then exit 1; fi
test ! -e /usr/local/bin/berthd
echo "try-install: berth was installed, ran under systemd, and was uninstalled"
RUN
chmod +x "$extra/run"
NODE_SUITES="" NODE_ONCE_SUITES="" NODE_DRIVERS=systemd NODE_EXTRA_DIR="$extra" \
  ./e2e/node/lane.sh
