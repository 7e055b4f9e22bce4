"""Thin wrappers of kernel interfaces: syscalls via ctypes, nothing container-specific."""
