#!/bin/sh
# Run as a container's command: reports, one key=value per line, what the container can and cannot do.
# The tests compare these lines under the defaults, --privileged and seccomp=unconfined.
status() { grep "^$1:" /proc/self/status | cut -f2; }
try() { if "$@" >/dev/null 2>&1; then echo allowed; else echo refused; fi; }

echo "pid=$$"
echo "hostname=$(hostname)"
echo "cap_eff=$(status CapEff)"
echo "cap_bnd=$(status CapBnd)"
echo "seccomp=$(status Seccomp)"
echo "no_new_privs=$(status NoNewPrivs)"
echo "timer_list_bytes=$(cat /proc/timer_list 2>/dev/null | wc -c)"
echo "keys_bytes=$(cat /proc/keys 2>/dev/null | wc -c)"
echo "sys_firmware_entries=$(ls /sys/firmware 2>/dev/null | wc -l)"
echo "proc_sys_write=$(try sh -c 'echo probe > /proc/sys/kernel/domainname')"
echo "sysrq_write=$(try sh -c 'echo h > /proc/sysrq-trigger')"
echo "mount_tmpfs=$(try mount -t tmpfs none /tmp)"
echo "unshare_user=$(try unshare -U true)"
echo "block_device=$(try sh -c 'mknod /tmp/probe-blk b 7 0 && head -c1 /tmp/probe-blk')"
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
echo "processes=$(ls /proc | grep -c '^[0-9]')"
