"""Hypervisor and host-resource drivers. They know nothing of the wire protocol."""
