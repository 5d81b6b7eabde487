"""Kernel datapaths and what they share.

* ``base``: the ``Datapath`` protocol, ``TapState``, mark helpers.
* ``routing``: policy routing for marked packets (both datapaths).
* ``listeners``: per-tap transparent listening sockets (both datapaths).
* ``links``: the netlink link watcher (managed taps and their ifindex).
* ``nft``: the nftables datapath; ``ebpf``: the tc/eBPF datapath.

Submodules are imported explicitly, so importing this package does not load
pyroute2 or BCC.
"""
