"""Raft on pysyncobj: the member, its journal, snapshots, transport and
membership (``pysyncobj_compat.py`` holds every reach into pysyncobj)."""

import _socket
import socket

import pysyncobj.tcp_connection  # noqa: F401  (imports pysyncobj.win_inet_pton)

# pysyncobj 0.3.17's win_inet_pton replaces socket.inet_ntop with its Windows
# version on every platform (its platform check covers only inet_pton), which
# then fails for every caller in the process. Put the C function back; this
# package is imported before any of its modules that import pysyncobj.
socket.inet_ntop = _socket.inet_ntop
