"""Overlay networks on this node's engine: dataplane, resolver, virtual IPs."""
