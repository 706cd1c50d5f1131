"""Where routes send connections: backends, responders, TLS termination, the gateway, tunnels."""
