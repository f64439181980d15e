"""Host network interfaces (virInterface*): live links from netlink, definitions on disk."""
