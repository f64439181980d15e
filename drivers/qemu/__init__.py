"""The QEMU/KVM driver."""
