"""Instructions the daemon runs per gateway request, counted by valgrind (callgrind).

    python bench/gateway_instructions.py [--small 100] [--large 600]

Latencies on a shared 2-core VM move with whatever else runs; an instruction
count does not. Two daemons in turn, each under `valgrind --tool=callgrind`
(user-space instructions; the kernel's share of a syscall is not counted),
behind the gateway of which one plain HTTP/1.1 client on one kept-alive
connection sends `--small`, then (to the second daemon) `--large`
sequential `POST /anthropic/v1/messages` to `tests/fake_upstream.py`. The
difference of the two totals over the difference of the counts is what one
request costs, start-up and shutdown dropping out. Takes about two minutes
(the daemon runs some 50× slower under valgrind). The project's modules are
byte-compiled first: a daemon that compiled them itself would count that too.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Proc, report
from gateway import start_argentd, start_fake

BODY = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def send(url: str, token: str, count: int) -> None:
    """`count` requests on one connection, each read to its end (Content-Length)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (f"POST /anthropic/v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\n"
               f"x-api-key: {token}\r\nanthropic-version: 2023-06-01\r\n"
               f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
               ).encode() + BODY
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        for _ in range(count):
            sock.sendall(request)
            buf = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("the gateway closed the connection")
                buf += data
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = [line.split(b":", 1)[1] for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:")]
                if not length:
                    raise RuntimeError("an answer without Content-Length")
                if len(rest) >= int(length[0]):
                    break


def instructions(fake_url: str, count: int, out_dir: Path) -> int:
    """Total instructions of one daemon's whole life that served `count` requests."""
    out = out_dir / f"callgrind.{count}.out"
    wrapper = out_dir / "python-under-callgrind"
    wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out}"
                       f' {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    real, sys.executable = sys.executable, str(wrapper)
    try:
        with Proc(f"instr-{count}") as proc:
            url, token = start_argentd(proc, fake_url)
            sys.executable = real
            send(url, token, count)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            proc.proc.wait(300)  # callgrind writes its counts at exit
    finally:
        sys.executable = real
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=600)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if args.large <= args.small:
        sys.exit("--large must be more than --small")
    repo = Path(__file__).resolve().parent.parent
    for package in (repo / "argentd", repo / "client" / "argent_client"):
        compileall.compile_dir(package, quiet=1)
    fake, fake_url = start_fake(1.0)
    try:
        with tempfile.TemporaryDirectory(prefix="argent-instr-") as tmp:
            small = instructions(fake_url, args.small, Path(tmp))
            large = instructions(fake_url, args.large, Path(tmp))
    finally:
        fake.terminate()
        fake.wait(10)
    per = (large - small) / (args.large - args.small)
    human = (f"daemon instructions per gateway request: {per:,.0f} "
             f"({args.small} requests: {small:,}; {args.large}: {large:,})")
    report({"small": args.small, "large": args.large, "instructions_small": small,
            "instructions_large": large, "per_request": round(per)}, human)


if __name__ == "__main__":
    main()
