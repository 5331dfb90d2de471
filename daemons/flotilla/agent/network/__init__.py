"""Overlay networks on this node's engine: dataplane, resolver, virtual IPs.

A network is one Linux bridge (``flb-<id>``) per engine with a VXLAN device
(``flv-<id>``) as a port whose forwarding and neighbour tables name every
remote endpoint (no flooding, no multicast), and a Docker network
(``flotilla-<name>``) that adopts the bridge so that containers get their
allocated addresses on it. :class:`NetworkDriver` (``driver.py``) makes an
engine match the list of networks it should have; ``vips.py`` spreads each
service's virtual IP over its tasks; ``resolver.py`` answers containers'
lookups of service names; ``python -m flotilla.agent.network``
applies a desired state from JSON and shows what is programmed.
"""
