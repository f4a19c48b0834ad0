"""lbd: a user-space L4 load balancer daemon (MetalLB-style VIPs + kube-proxy-style relay)."""

__version__ = "0.1.0"
