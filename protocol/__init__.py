"""libvirt's wire protocol: the XDR compiler, the program definitions and the packet header."""
