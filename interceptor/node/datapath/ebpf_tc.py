"""tc plumbing of the eBPF datapath: the ``clsact`` qdisc and our filter on
each tap, recognised by name (``TCA_BPF_NAME``) so that a later run, or
``--cleanup`` after a crash, finds them without any state of its own.
Everything acts in the network namespace of the calling thread."""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from interceptor.common.errors import DatapathError

INGRESS_PARENT = 0xFFFFFFF2  # clsact ingress ("ffff:fff2")
EGRESS_PARENT = 0xFFFFFFF3
FILTER_HANDLE = 1


class LinkGone(Exception):
    """The link disappeared while we worked on it (tap churn)."""


class TcFilters:
    """Our filter (one name, one prio, one handle) on any number of links."""

    def __init__(self, name: str, prio: int) -> None:
        self.name = name
        self.prio = prio
        self.attached: set[int] = set()  # ifindexes carrying our filter, as far as we know

    def attach(self, ipr: Any, ifindex: int, fd: int) -> None:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                raise LinkGone from None
            if exc.code != errno.EEXIST:
                raise DatapathError(f"ebpf: cannot add clsact on ifindex {ifindex}: {exc}") \
                    from None
        try:
            ipr.tc("replace-filter", "bpf", ifindex, f":{FILTER_HANDLE}", fd=fd,
                   name=self.name, parent=INGRESS_PARENT, prio=self.prio,
                   classid=1, direct_action=True)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                raise LinkGone from None
            raise DatapathError(f"ebpf: cannot attach to ifindex {ifindex}: {exc}") from None
        self.attached.add(ifindex)

    def detach(self, ipr: Any, ifindex: int) -> None:
        """Delete our filter; delete the clsact qdisc when nothing else uses it."""
        self.attached.discard(ifindex)
        try:
            if self._ours_on(ipr, ifindex):
                ipr.tc("del-filter", "bpf", ifindex, f":{FILTER_HANDLE}",
                       parent=INGRESS_PARENT, prio=self.prio)
            if not any(ipr.get_filters(index=ifindex, parent=parent)
                       for parent in (INGRESS_PARENT, EGRESS_PARENT)):
                ipr.tc("del", "clsact", ifindex)
        except NetlinkError as exc:
            # Gone already: the link (ENODEV), the filter (ENOENT), the qdisc (EINVAL).
            if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                raise DatapathError(f"ebpf: cannot detach from ifindex {ifindex}: {exc}") \
                    from None

    def _ours_on(self, ipr: Any, ifindex: int) -> bool:
        for f in ipr.get_filters(index=ifindex, parent=INGRESS_PARENT):
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME") == self.name:
                return True
        return False

    def scan(self, ipr: Any) -> set[int]:
        """Every link whose clsact ingress carries a filter with our name."""
        found: set[int] = set()
        for q in ipr.get_qdiscs():
            if q.get_attr("TCA_KIND") != "clsact":
                continue
            try:
                if self._ours_on(ipr, int(q["index"])):
                    found.add(int(q["index"]))
            except NetlinkError:
                continue
        return found
