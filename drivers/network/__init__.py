"""The network driver: libvirt's virtual networks (definitions, life cycle, ports)."""
