"""The aiovirtd server: listeners, clients, framing, dispatch and configuration."""
