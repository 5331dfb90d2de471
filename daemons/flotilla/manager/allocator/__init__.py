"""The allocator (leader only): networks' subnets and VXLAN ids, services'
virtual IPs, tasks' and nodes' addresses on networks."""
