"""Packet capture on one interface of a network namespace, as tcpdump would
take it, without tcpdump: a child process in the namespace reads every frame
the interface sends or receives from a packet socket and writes them to a
file (length-prefixed), until it is stopped.

    with Capture("fle-a", "eth0", path) as cap:
        ...                                   # traffic
    cap.frames()                              # every frame, as bytes
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys

ETH_P_ALL = 0x0003


@dataclasses.dataclass(frozen=True)
class Udp:
    """A UDP datagram in a captured frame (IPv4 only)."""
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def udp_of(frame: bytes) -> Udp | None:
    """The IPv4 UDP datagram an Ethernet frame carries, if it is one."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != socket.IPPROTO_UDP or len(ip) < ihl + 8:
        return None
    sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
    return Udp(socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), sport, dport,
               ip[ihl + 8:])


class Capture:
    def __init__(self, netns: str, iface: str, path: str):
        self.netns, self.iface, self.path = netns, iface, path
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Capture:
        # run as a script (no imports of ours), in the namespace
        cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable,
               os.path.abspath(__file__), self.iface, self.path]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if line.strip() != "capturing":
            self.stop()
            raise RuntimeError(f"capture on {self.netns}/{self.iface} did not start: "
                               f"{line.strip()} {self._stderr()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stderr(self) -> str:
        try:
            return (self._proc.stderr.read() if self._proc and self._proc.stderr else "")[:500]
        except ValueError:
            return ""

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        self._proc = None

    def frames(self) -> list[bytes]:
        out = []
        with open(self.path, "rb") as f:
            data = f.read()
        i = 0
        while i + 4 <= len(data):
            (n,) = struct.unpack("!I", data[i:i + 4])
            if i + 4 + n > len(data):
                break
            out.append(data[i + 4:i + 4 + n])
            i += 4 + n
        return out


def _main(iface: str, path: str) -> None:
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    with open(path, "wb") as out:
        print("capturing", flush=True)
        while not stop:
            try:
                frame = sock.recv(65535)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            out.write(struct.pack("!I", len(frame)) + frame)
            out.flush()


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
