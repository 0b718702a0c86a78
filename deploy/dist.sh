#!/bin/sh
# make dist: the release tarball that a hand install and the installer image both use.
#
#   deploy/dist.sh <berthd> <out dir>
#
# Writes <out dir>/berth-<version>-linux-<arch>/ (berthd, install.sh, berthd.service, the default
# config.toml, the Helm chart, the operator's guide, SHA256SUMS) and the same as a .tar.gz
# beside it, and prints the tarball's path. The tarball is reproducible: entries sorted, owned
# by 0:0, every mtime SOURCE_DATE_EPOCH (default: the last commit's time), gzip without a name
# or time, so the same inputs give the same bytes.
set -eu
[ $# = 2 ] || { echo "usage: $0 <berthd> <out dir>" >&2; exit 2; }
berthd=$1 out=$2
top=$(cd "$(dirname "$0")/.." && pwd)
version=$("$berthd" version | sed -n 's/^berthd \([^ ]*\) .*/\1/p')
[ -n "$version" ] || { echo "dist: $berthd version said nothing usable" >&2; exit 1; }
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || echo 0)}
name=berth-$version-linux-$arch
dir=$out/$name
rm -rf "$dir" "$dir.tar.gz"
mkdir -p "$dir"
install -m 0755 "$berthd" "$dir/berthd"
install -m 0755 "$top/deploy/installer/install.sh" "$dir/install.sh"
install -m 0644 "$top/deploy/berthd.service" "$dir/berthd.service"
# The defaults, as the binary prints them (a unit test keeps deploy/config.toml equal to them).
"$berthd" config default >"$dir/config.toml"
chmod 0644 "$dir/config.toml"
cp -R "$top/deploy/helm/berth" "$dir/chart"
install -m 0644 "$top/docs/operations.md" "$dir/operations.md"
(cd "$dir" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
tar -C "$out" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  --mode='u+rwX,go+rX,go-w' --format=gnu -cf - "$name" | gzip -n >"$dir.tar.gz"
echo "$dir.tar.gz"
