"""rtnetlink: a lean codec and the kernel I/O built on it.

The hot path (thousands of routes per apply) encodes and parses messages with
``struct`` directly: generic netlink libraries spend hundreds of microseconds
per message, the kernel a few.
"""
