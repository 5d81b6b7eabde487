"""The few raw ``bpf(2)`` commands BCC's Python module does not wrap.

* ``BPF_OBJ_GET`` and ``BPF_OBJ_GET_INFO_BY_FD`` let the loader check that
  pinned maps left by an earlier run have the layout the program expects
  (BCC silently adopts a pinned map of any size).
* ``BPF_PROG_TEST_RUN`` runs a loaded program on one frame without a device
  (the packet-level tests use it; it is harmless to ship).

x86_64 and aarch64 only (the syscall number); everything is ctypes over libc.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15

# struct __sk_buff (UAPI): 192 bytes; the fields BPF_PROG_TEST_RUN accepts.
SKB_CTX_SIZE = 192
_SKB_MARK_OFF = 8
_SKB_IFINDEX_OFF = 40


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32),
                ("_pad", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):
    # Leading part of struct bpf_map_info; the kernel fills what fits.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


class _TestAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgRunResult:
    retval: int
    data: bytes
    mark: int
    duration_ns: int = 0  # mean run time per repetition, as the kernel measured it


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf(2): unsupported architecture {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    ret = int(libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def obj_get(path: str) -> int:
    """An fd for the pinned object at ``path`` (OSError if there is none)."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(raw)))


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                           info=ctypes.addressof(info)))
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)


def pinned_map_info(path: str) -> MapInfo:
    fd = obj_get(path)
    try:
        return map_info(fd)
    finally:
        os.close(fd)


def prog_test_run(prog_fd: int, frame: bytes, *, ifindex: int = 0, mark: int = 0,
                  out_size: int = 4096, repeat: int = 1) -> ProgRunResult:
    """Run a tc program on ``frame`` (Ethernet first) as if it arrived on
    ``ifindex`` (must exist in the calling thread's network namespace; 0 = lo),
    ``repeat`` times on a fresh copy each (for timing). Returns the action, the
    frame as the program left it, ``skb->mark`` and the mean run time."""
    ctx_in = ctypes.create_string_buffer(SKB_CTX_SIZE)
    ctx_out = ctypes.create_string_buffer(SKB_CTX_SIZE)
    ctypes.c_uint32.from_buffer(ctx_in, _SKB_MARK_OFF).value = mark
    ctypes.c_uint32.from_buffer(ctx_in, _SKB_IFINDEX_OFF).value = ifindex
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(out_size)
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(frame), data_size_out=out_size,
                     data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out),
                     repeat=repeat, ctx_size_in=SKB_CTX_SIZE, ctx_size_out=SKB_CTX_SIZE,
                     ctx_in=ctypes.addressof(ctx_in), ctx_out=ctypes.addressof(ctx_out))
    _bpf(BPF_PROG_TEST_RUN, attr)
    return ProgRunResult(retval=attr.retval, data=data_out.raw[:attr.data_size_out],
                         mark=ctypes.c_uint32.from_buffer(ctx_out, _SKB_MARK_OFF).value,
                         duration_ns=attr.duration)
