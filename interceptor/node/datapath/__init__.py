"""Kernel datapaths and what they share.

* ``base``: the ``Datapath`` protocol, ``TapState``, ``TapCounters``, marks.
* ``contract``: how both datapaths must behave: options and their mapping
  from the node config, tap entries, steering policy, counter names.
* ``bridge``: how bridged taps' frames reach the tap's listener (both).
* ``routing``: policy routing for marked packets (both).
* ``listeners``: per-tap transparent listening sockets (both).
* ``netlink``: the one hand-parsed link dump; ``links``: the link watcher.
* ``nft`` (per-tap state), ``nft_ruleset`` (config and rules), ``nft_cli``
  (running ``nft``), ``zones`` (conntrack zones): the nftables datapath.
* ``ebpf`` (program, maps), ``ebpf_tc`` (filters), ``ebpf_pins`` (bpffs),
  ``ebpf_guard`` (unsynced taps), ``ebpf_syscall`` (raw bpf(2)),
  ``bpf/tap_ingress.c``: the tc/eBPF datapath.

Submodules are imported explicitly, so importing this package does not load
pyroute2 or BCC.
"""
