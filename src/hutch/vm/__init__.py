"""The microVM isolation backend: the same container inside a QEMU ``microvm`` guest.

kernel (vmlinux from the host's cloud kernel), initramfs (busybox + modules + init), rootdisk (the image as
erofs), qemu (command line), accel (KVM probe), script (the container's config for the guest), supervisor
(the shim between engine and guest), backend (what the engine calls). Imported only for ``--isolation vm``.
"""
