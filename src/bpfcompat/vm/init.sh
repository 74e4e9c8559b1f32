#!/usr/bin/busybox sh
# bpfcompat guest init (PID 1): mount the kernel filesystems BPF needs, load the NIC
# modules carried for the booted kernel, bring up the user-mode network and start
# dropbear with the per-run key given on the kernel command line. PID 1 never exits.
export PATH=/usr/sbin:/usr/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run /root/.ssh
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
if [ -f /bpfcompat/modules/order ]; then
  for m in $(cat /bpfcompat/modules/order); do
    insmod "/bpfcompat/modules/$m.ko" || echo "bpfcompat-init: insmod $m failed"
  done
fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
key=
for arg in $(cat /proc/cmdline); do
  case "$arg" in bpfcompat.key=*) key="${arg#bpfcompat.key=}" ;; esac
done
umask 077
echo "ssh-ed25519 $key bpfcompat-run" > /root/.ssh/authorized_keys
dropbear -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key
echo "bpfcompat-guest-ready $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done
