"""Keep the host routes of Incus/LXD routed NICs only in the routing tables chosen."""

__version__ = "0.1.0"
