"""What runs inside the namespaces of :mod:`tests.helpers.viplab`.

    vipnode.py serve NAME PORT
        TCP and UDP on PORT: every connection (datagram) is answered with
        "NAME PEER_ADDRESS"; prints "ready" once both are bound.
    vipnode.py connect ADDR PORT N [--udp] [--timeout S]
        N connections (datagrams, each from a new socket) one after the
        other; prints a JSON list of [seconds taken, answer or error name].
    vipnode.py watch ADDR PORT SECONDS
        TCP connections one after the other for SECONDS; prints a JSON list
        of [monotonic start, seconds taken, answer or error name].
    vipnode.py mix PORT SECONDS BATCH ADDR...
        TCP connections one after the other for SECONDS, BATCH to each
        address in turn (so that all see the same load); an ADDR of the form
        A1,A2,... is its addresses one after the other. Prints a JSON
        object: ADDR -> [[seconds taken, answer or error name]...].

Plain Python, no Flotilla imports: it starts fast in a namespace.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def serve(name: str, port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(512)

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(512)
            udp.sendto(f"{name} {peer[0]}".encode(), peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = tcp.accept()
        try:
            conn.sendall(f"{name} {peer[0]}\n".encode())
        except OSError:
            pass
        conn.close()


def once(addr: str, port: int, udp: bool, timeout: float) -> str:
    if udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))      # connected: an ICMP error is reported
            s.send(b"?")
            return s.recv(512).decode().strip()
    with socket.create_connection((addr, port), timeout=timeout) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(512)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()


def attempt(addr: str, port: int, udp: bool, timeout: float) -> tuple[float, str]:
    t0 = time.monotonic()
    try:
        answer = once(addr, port, udp, timeout)
    except OSError as exc:
        answer = type(exc).__name__
    return time.monotonic() - t0, answer


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "serve":
        serve(argv[1], int(argv[2]))
    elif cmd == "connect":
        addr, port, n = argv[1], int(argv[2]), int(argv[3])
        udp = "--udp" in argv
        timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 5.0
        print(json.dumps([attempt(addr, port, udp, timeout) for _ in range(n)]))
    elif cmd == "watch":
        addr, port, seconds = argv[1], int(argv[2]), float(argv[3])
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            taken, answer = attempt(addr, port, False, 2.0)
            out.append((t0, taken, answer))
        print(json.dumps(out))
    elif cmd == "mix":
        port, seconds, batch, addrs = int(argv[1]), float(argv[2]), int(argv[3]), argv[4:]
        results: dict[str, list[tuple[float, str]]] = {a: [] for a in addrs}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for addr in addrs:
                rotation = addr.split(",")
                results[addr] += [attempt(rotation[i % len(rotation)], port, False, 2.0)
                                  for i in range(batch)]
        print(json.dumps(results))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
