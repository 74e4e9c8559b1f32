#!/usr/bin/busybox sh
# bpfcompat guest init (PID 1): mount the kernel filesystems BPF needs, load the NIC
# modules carried for the booted kernel, bring up the user-mode network and start
# dropbear. PID 1 never exits.
# With the per-run key on the kernel command line (a plain boot), dropbear starts at once
# with the image's host key. Without one (agent mode), the agent waits on the console for
# the host's handoff (keys, time, entropy): the host may save the guest as a snapshot while
# it waits, and every guest restored from it gets its own.
# Every fork costs emulated CPU on the boot's critical path: shell builtins are used
# where they do the job (read, case, echo) and busybox is static.
export PATH=/usr/sbin:/usr/bin
mkdir -p /proc /sys /dev /tmp/bpfc /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /root/.ssh
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
if [ -f /bpfcompat/modules/order ]; then
  while read -r m; do
    insmod "/bpfcompat/modules/$m.ko" || echo "bpfcompat-init: insmod $m failed"
  done < /bpfcompat/modules/order
fi
ifconfig lo up
ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up
read -r cmdline < /proc/cmdline
key=
for arg in $cmdline; do
  case "$arg" in bpfcompat.key=*) key="${arg#bpfcompat.key=}" ;; esac
done
umask 077
if [ -n "$key" ]; then
  echo "ssh-ed25519 $key bpfcompat-run" > /root/.ssh/authorized_keys
  # -s: keys only; -j -k: no port forwarding; -W: a 1 MiB window for artifact uploads.
  dropbear -s -j -k -W 1048576 -p 22 -r /etc/dropbear/dropbear_ed25519_host_key
  read -r up _ < /proc/uptime
  echo "bpfcompat-guest-ready $up"
else
  # Probed once here, so every guest restored from this one finds the answer cached.
  PYTHONPATH=/opt/bpfcompat python3 -m bpfcompat.validator.warm || echo "bpfcompat-init: warm-up failed"
  python3 -I -S /bpfcompat/agent.py || echo "bpfcompat-init: agent failed"
fi
while :; do sleep 3600; done
