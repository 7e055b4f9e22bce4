"""Container networking: bridges, IPAM, NAT, published ports and name resolution on user networks.

The engine talks only to ``hutch.network.manager``. Nothing here is imported for ``--network none`` or
``host``; pyroute2 (``links``) is imported only when a bridge has to be created, removed or inspected, never
on the per-container start path (which uses ``hutch.linux.rtnl``).
"""
