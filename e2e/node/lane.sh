#!/bin/sh
# The node lane: runs e2e suites inside a VM with systemd as PID 1 on a pure cgroup v2 hierarchy
# (image.sh builds and caches it), once per cgroup driver named in NODE_DRIVERS.
#
#   lane.sh [suite ...]     the suites (e2e/tests/<suite>.rs) to run under every driver; when
#                           none, NODE_SUITES under every driver and NODE_ONCE_SUITES under the first
#                           (either set empty runs none of its suites)
#
# Needs root (the VM's disks are made with mkfs.ext4 -d, which keeps ownership only for root).
# The host builds everything; the VM gets the binaries on a second disk and writes what the
# suites print to its second serial port, which ends with "berth-node: exit <status>".
set -eu

cd "$(dirname "$0")/../.."
# Under each cgroup driver: the suites whose subject the driver changes (where pods, monitors
# and containers run, limits, OOM, stats, exec's cgroup, the unit's restarts).
NODE_SUITES="${NODE_SUITES-node_service sandbox_cgroups container_resources exec_identity}"
# Under the first driver only: the rest of what a v2 systemd node changes (the container
# lifecycle and its logs, namespaces and CNI, the monitor on its own, seccomp, AppArmor, pod user
# namespaces (cgroup v2 in a user namespace), and the
# installer run as the Helm chart's DaemonSet runs it, installing berthd under systemd). The
# whole of `make test` must stay within 25 minutes on 2 cores, and TCG makes each suite 5-10x
# slower than on the host.
NODE_ONCE_SUITES="${NODE_ONCE_SUITES-containers sandbox monitor_containers seccomp apparmor user_namespaces faults node_install}"
NODE_DRIVERS="${NODE_DRIVERS:-systemd cgroupfs}"
# Tests left to the host suite: loops that prove no leak over many cycles, 10-20x slower under
# TCG and testing nothing cgroup v2 or systemd changes; and the faults whose subject is not the
# cgroup layout (a registry's, a log flood's, ExecSync's limits, a full log disk, create
# races, the crash points, whose restarts take minutes under TCG). The faults suite's dead
# monitor does run here: a scope is ended and removed differently from a cgroupfs leaf.
NODE_SKIP="${NODE_SKIP:-a_hundred_create_start_stop_remove_cycles_leave_nothing fifty_run_stop_remove_cycles_leave_nothing endless_error_bodies log_floods exec_sync_answers a_full_log_disk retried_while remove_image_racing fifty_pods stop_pod_sandbox_racing a_crash_at_any_step a_created_container_holds a_monitor_dying after_a_reboot}"
NODE_TIMEOUT="${NODE_TIMEOUT:-1500}"
# What one suite may take in the VM (the slowest takes about 100 s under TCG).
NODE_SUITE_TIMEOUT="${NODE_SUITE_TIMEOUT:-420}"
NODE_ACCEL="${NODE_ACCEL:-tcg}"
NODE_CPU="${NODE_CPU:-max}"
NODE_CPUS="${NODE_CPUS:-2}"
NODE_MEMORY="${NODE_MEMORY:-3072}"
if [ $# -gt 0 ]; then
  suites="$*" once=""
else
  suites="$NODE_SUITES $NODE_ONCE_SUITES" once="$NODE_ONCE_SUITES"
fi
CARGO="${CARGO:-cargo}"

# The image is amd64 and qemu emulates what the host lacks; on another architecture the lane
# does not run, and says so where `make test` counts skips (and fails under CI, as a skip does).
if [ "$(uname -m)" != x86_64 ]; then
  echo "node lane: SKIPPED: it needs an x86_64 host (this is $(uname -m))"
  [ -n "${BERTH_E2E_SKIPS:-}" ] && echo "node lane: needs an x86_64 host" >>"$BERTH_E2E_SKIPS"
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi
command -v qemu-system-x86_64 >/dev/null || { echo "node lane: qemu-system-x86_64 is missing (apt install qemu-system-x86)" >&2; exit 1; }
image=$(./e2e/node/image.sh)

# The binaries under test, built on the host: berthd, the e2e helper binaries, and each suite.
$CARGO build --bin berthd
$CARGO build -p berth-e2e --bins
target=$($CARGO metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
executables=""
if [ -n "$(echo $suites)" ]; then
  test_args="-p berth-e2e --features node-lane --no-run $(for s in $suites; do printf -- '--test %s ' "$s"; done)"
  # shellcheck disable=SC2086 # one word per argument
  $CARGO test $test_args
  # shellcheck disable=SC2086
  executables=$($CARGO test $test_args --message-format=json \
    | grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/')
fi
if [ "$(echo "$executables" | wc -w)" != "$(echo "$suites" | wc -w)" ]; then
  echo "node lane: expected a test binary for each of: $suites; cargo gave: $executables" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/berth-node.XXXXXX")
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

payload="$work/payload"
mkdir -p "$payload/bin" "$payload/tests"
cp "$target/debug/berthd" "$target/debug/berth-cni-gate" "$payload/bin/"
for e in $executables; do cp "$e" "$payload/tests/"; done
# NODE_EXTRA_DIR: a directory of your own (a locally built critest with its images, say) copied
# in as /opt/berth-node/extra; its `run` runs after the suites, and its exit status counts.
[ -n "${NODE_EXTRA_DIR:-}" ] && cp -a "$NODE_EXTRA_DIR" "$payload/extra"
cat >"$payload/run" <<RUN
#!/bin/sh
# Written by e2e/node/lane.sh: runs in the VM as berth-node.service.
set -u
# The suites were compiled on the host: the paths cargo gave them must resolve here too.
mkdir -p "$target/debug"
ln -sf /opt/berth-node/bin/berthd "$target/debug/berthd"
ln -sf /opt/berth-node/bin/berth-cni-gate "$target/debug/berth-cni-gate"
export CI=1 BERTHD=/opt/berth-node/bin/berthd RUST_BACKTRACE=1
echo "berth-node: kernel \$(uname -r), /sys/fs/cgroup is \$(stat -fc %T /sys/fs/cgroup), PID 1 is \$(cat /proc/1/comm)"
echo "berth-node: controllers \$(cat /sys/fs/cgroup/cgroup.controllers)"
status=0
first=1
for driver in $NODE_DRIVERS; do
  export BERTH_E2E_CGROUP_DRIVER=\$driver
  for t in \$(ls /opt/berth-node/tests); do
    t=/opt/berth-node/tests/\$t
    name=\$(basename "\$t" | sed 's/-[0-9a-f]*\$//')
    case " $once " in *" \$name "*) [ \$first = 1 ] || continue ;; esac
    echo "berth-node: suite \$name, cgroup driver \$driver"
    start=\$(date +%s)
    # A suite that hangs fails here, naming itself, instead of holding the VM to NODE_TIMEOUT.
    timeout --signal=KILL $NODE_SUITE_TIMEOUT "\$t" --test-threads=2 $(for t in $NODE_SKIP; do printf -- '--skip %s ' "$t"; done)
    rc=\$?
    if [ \$rc != 0 ]; then
      status=1
      echo "berth-node: FAILED suite \$name, cgroup driver \$driver"
    fi
    if [ \$rc = 137 ]; then
      # Killed while hung: what was still running, systemd's pending jobs, and the logs of the
      # agents whose tests never finished (a finished test removes its directory).
      echo "berth-node: suite \$name ran past ${NODE_SUITE_TIMEOUT} s; what is left:"
      ps -eo pid,ppid,stat,wchan:24,etime,args | grep -v ' \\['
      systemctl list-jobs --no-pager
      for log in /tmp/berth-e2e-*/berthd.log; do
        [ -f "\$log" ] && { echo "berth-node: \$log ends:"; grep -v ' h2::' "\$log" | tail -n 60; }
      done
    fi
    echo "berth-node: suite \$name took \$((\$(date +%s) - start)) s"
  done
  first=0
done
if [ -x /opt/berth-node/extra/run ]; then
  echo "berth-node: extra run"
  start=\$(date +%s)
  /opt/berth-node/extra/run || { status=1; echo "berth-node: FAILED extra run"; }
  echo "berth-node: extra run took \$((\$(date +%s) - start)) s"
fi
exit \$status
RUN
chmod +x "$payload/run"
size=$(( $(du -sm "$payload" | cut -f1) + 64 ))
mkfs.ext4 -q -F -d "$payload" "$work/payload.img" "${size}M" >&2

: >"$work/results.log"
echo "node lane: booting ($NODE_ACCEL, $NODE_CPUS CPUs, $NODE_MEMORY MiB), suites: $suites; drivers: $NODE_DRIVERS"
started=$(date +%s)
qemu-system-x86_64 -accel "$NODE_ACCEL" -cpu "$NODE_CPU" -smp "$NODE_CPUS" -m "$NODE_MEMORY" \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 apparmor=1 security=apparmor" \
  -drive file="$image/base.img",if=virtio,format=raw,snapshot=on \
  -drive file="$work/payload.img",if=virtio,format=raw,readonly=on \
  -nic none -display none -monitor none -no-reboot \
  -serial file:"$work/console.log" -serial file:"$work/results.log" &
qemu_pid=$!
tail -f "$work/results.log" --pid="$qemu_pid" &
tail_pid=$!
waited=0
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ "$waited" -ge "$NODE_TIMEOUT" ]; then
    echo "node lane: no result after $NODE_TIMEOUT s; the VM's console ends:" >&2
    tail -40 "$work/console.log" >&2
    exit 1
  fi
  sleep 2
  waited=$((waited + 2))
done
wait "$qemu_pid" || true
qemu_pid=""
wait "$tail_pid" 2>/dev/null || true
echo "node lane: VM ran $(( $(date +%s) - started )) s"
result=$(grep -a '^berth-node: exit ' "$work/results.log" | tail -1 | tr -d '\r' | sed 's/berth-node: exit //')
if [ -z "$result" ]; then
  echo "node lane: the VM stopped without a result; its console ends:" >&2
  tail -40 "$work/console.log" >&2
  exit 1
fi
[ "$result" = 0 ] || { echo "node lane: failed (exit $result)" >&2; exit 1; }
echo "node lane: passed"
