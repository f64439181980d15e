"""End-to-end tests: a real aiovirtd driven by stock virsh and libvirt-python."""
