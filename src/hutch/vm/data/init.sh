#!/bin/busybox sh
# hutch's guest init: pid 1 of the microVM until the container's config arrives. It loads the modules,
# finds the control and stdio ports, mounts the tmpfs for the overlay and hands over to the guest agent,
# which reads the container's stage and config (see hutch/vm/script.py) and runs the container.
# Kept to busybox builtins and applets: the initramfs holds nothing else. Applets are called by name so
# that busybox sh runs them without an exec (FEATURE_SH_STANDALONE): each exec is slow under TCG.
fail() { echo "hutch-init: $*" >/dev/ttyS0; [ -n "$CTL" ] && echo "fail $*" >&3; poweroff -f; }
# One exec mounts /proc, /sys, /dev and the tmpfs for the overlay's upper layer (the initramfs's
# /etc/fstab); the first applet goes by path: running applets by name needs /proc/self/exe.
/bin/busybox mount -a || fail "mount -a"
# hutch's KVM probe: reaching this line is the proof the accelerator runs this kernel.
read -r CMDLINE </proc/cmdline
case " $CMDLINE " in *" hutch.probe "*) echo hutch-probe-ok >/dev/ttyS0 && poweroff -f ;; esac
# One modprobe for all of them (one exec; it reads the initramfs's own modules.dep). With a network card
# (hutch.net on the command line) its driver too, before "ready", so a template clone has it loaded; the
# host sends eth0's settings with the config (see hutch/vm/script.py network).
lists=/modules
case " $CMDLINE " in *" hutch.net "*) lists="/modules /modules.net" ;; esac
mods=
for list in $lists; do
	while read -r m; do mods="$mods ${m%.ko}"; done <"$list"
done
modprobe -a $mods 2>/dev/ttyS0 || fail "modprobe" $mods
# A mark in the kernel log (not the console: it is below the quiet level) for bench/vm.py's phases.
echo "hutch-init: modules loaded" >/dev/kmsg
# Port names reach the guest asynchronously after the ports appear: look until all four are named.
tries=0
until [ -n "$CTL" ] && [ -n "$IN" ] && [ -n "$OUT" ] && [ -n "$ERR" ]; do
	for p in /sys/class/virtio-ports/*; do
		n=
		read -r n 2>/dev/null <"$p/name"
		case "$n" in
		hutch.ctl) CTL=/dev/${p##*/} ;;
		hutch.stdin) IN=/dev/${p##*/} ;;
		hutch.stdout) OUT=/dev/${p##*/} ;;
		hutch.stderr) ERR=/dev/${p##*/} ;;
		esac
	done
	tries=$((tries + 1))
	[ "$tries" -lt 1000 ] || fail "virtio-serial ports not found"
	[ -n "$ERR" ] || sleep 0.01
done
exec 3<>"$CTL"
mkdir -p /rw/upper /rw/work
# The guest agent takes over as pid 1 (hutch/native/vmagent.c): it reads the stage, has the container's
# pid 1 build it, and says "ready" (a template is saved at that point; the image's disk is read only
# after the config arrives, so a restored clone can be handed another image's disk). The container's pid
# 1 then reads its config, mounts the erofs disk under the overlay, says "up" and execs the command; the
# agent forwards signals, relays a pty and `hutch exec`s, reports "exit N" and powers off.
exec /bin/hutch-vmagent "$IN" "$OUT" "$ERR"
