"""The agent's layer-2 dataplane for overlay networks, on one Docker engine.

A network is one Linux bridge (``flb-<id>``) per engine, holding this node's
attachment address, with a VXLAN device (``flv-<id>``) as a port whose
forwarding and neighbour tables name every remote endpoint (no flooding, no
multicast), and a Docker network (``flotilla-<name>``) that adopts the bridge
so that containers get their allocated addresses on it. :class:`NetworkDriver`
(``driver.py``) makes an engine match the list of networks it should have;
``python -m flotilla.agent.network`` does the same from JSON, and shows what
is programmed.
"""
