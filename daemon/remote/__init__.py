"""Handlers of libvirt's REMOTE and QEMU programs, one module per object kind."""
