"""Proxy engine throughput (issue 4): requests per second and latency through the valetkey proxy
engine vs through mitmproxy with an equivalent addon, next to the upstream reached directly, all
in the same run, driven by ``hey`` (keep-alive, C workers, a fixed duration):

1. plain HTTP: ``hey -x http://valetkey:TOKEN@127.0.0.1:PORT http://127.0.0.1:UP/`` (hey's Go
   client sends ``Proxy-Authorization`` from the proxy URL's user info on every request);
2. intercepted HTTPS: the same to ``https://127.0.0.1:TLSUP/`` — a CONNECT per hey worker, then
   keep-alive requests inside the tunnel; both proxies verify the upstream's certificate (made
   here by a throwaway test CA) and present their own CA's leaf to hey, which does not verify
   server certificates (hey sets ``InsecureSkipVerify``), so no trust store needs changing.

Each proxy runs in its own process: ours (``ProxyServer`` on uvloop with a gate that does what
the real one does per request on the hot path: a cached ``Proxy-Authorization`` → run lookup, one
header added, a bounded request log), and ``mitmdump`` from PyPI in an isolated uvx environment
with an addon that sets one request header and ``proxyauth`` set to the same user and token.
The upstream is a uvloop protocol answering every request with a 13-byte body.

    uv run python bench/proxy_throughput.py [--seconds 5] [--connections 50]
        [--mitmproxy "mitmproxy<12.3.1"] [--mitm-python PATH]

Goals (issue 4): >= 3x mitmproxy's requests per second in both modes; <= 1 ms added p50 over
direct for plain HTTP. Everything runs on 127.0.0.1 in a temp folder removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "b" * 64
BODY = b"hello, world\n"

ADDON = """
from mitmproxy import http


class Inject:
    def request(self, flow: http.HTTPFlow) -> None:
        flow.request.headers["Authorization"] = "Bearer real-token-from-the-vault"


addons = [Inject()]
"""


# ---------------------------------------------------------------------- child processes


def serve_upstream(port_file: str, cert: str | None, key: str | None) -> None:
    """A fast upstream: every request head gets a 13-byte 200 (GET only, no bodies)."""
    import asyncio
    import ssl

    import uvloop

    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (
        len(BODY),
        BODY,
    )

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            data = self.pending + data
            n = data.count(b"\r\n\r\n")
            self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if n else data
            if n:
                self.transport.write(response * n)  # type: ignore[attr-defined]

    async def main() -> None:
        ctx = None
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            ctx.set_alpn_protocols(["http/1.1"])
        server = await asyncio.get_running_loop().create_server(
            Proto, "127.0.0.1", 0, ssl=ctx, backlog=1024
        )
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await server.serve_forever()

    uvloop.run(main())


def serve_proxy(port_file: str, ca_folder: str, extra_ca: str) -> None:
    """Our engine with a gate doing the real gate's hot-path work."""
    import asyncio
    import base64
    import collections

    import uvloop

    from valetkey_proxy.ca import LocalCA
    from valetkey_proxy.exchange import Outcome, Request, Response, Verdict
    from valetkey_proxy.server import ProxyServer
    from valetkey_proxy.upstream import upstream_ssl_context

    class BenchGate:
        def __init__(self) -> None:
            self.runs = {TOKEN: object()}
            self.auth_cache: dict[str, str] = {}
            self.log: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=1000)

        def authenticate(self, value: str | None) -> object | None:
            if not value:
                return None
            token = self.auth_cache.get(value)
            if token is None:
                scheme, _, b64 = value.partition(" ")
                if scheme.lower() != "basic":
                    return None
                _user, _, token = base64.b64decode(b64).decode().partition(":")
                self.auth_cache[value] = token
            return self.runs.get(token)

        def on_connect(self, run: object, host: str, port: int) -> Verdict:
            return Verdict()

        async def on_request(self, run: object, request: Request) -> Verdict:
            request.headers.append(("Authorization", "Bearer real-token-from-the-vault"))
            return Verdict()

        def on_response(
            self, run: object, request: Request, response: Response, verdict: Verdict
        ) -> Response:
            return response

        def on_complete(
            self, run: object, request: Request, verdict: Verdict, outcome: Outcome
        ) -> None:
            self.log.append((request.host, request.target, outcome.status))

        async def local(self, request: Request, auth: str | None) -> Response | None:
            return None

    async def main() -> None:
        ca = LocalCA.load_or_create(Path(ca_folder), None)
        proxy = ProxyServer(BenchGate(), ca, upstream_ssl=upstream_ssl_context(extra_ca))
        await proxy.start()
        Path(port_file).write_text(str(proxy.port))
        await asyncio.Event().wait()

    uvloop.run(main())


# ---------------------------------------------------------------------- helpers


@dataclass
class Load:
    rate: float
    p50_ms: float
    p99_ms: float
    count: int
    non_200: int


def run_hey(url: str, seconds: float, conc: int, proxy: str | None) -> Load:
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(conc), "-cpus", "1"]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def num(pattern: str) -> float:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"unexpected hey output (no {pattern!r}):\n{out}")
        return float(found.group(1))

    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get ", out))
    return Load(
        rate=num(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=num(r"50% in ([\d.]+) secs") * 1000,
        p99_ms=num(r"99% in ([\d.]+) secs") * 1000,
        count=sum(codes.values()),
        non_200=sum(v for c, v in codes.items() if c != 200) + errors,
    )


class Child:
    """A subprocess that writes its port to a file when it listens."""

    def __init__(self, cmd: list[str], port_file: Path, env: dict[str, str] | None = None):
        self.port_file = port_file
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_port(self, timeout: float = 120.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.port_file.exists() and self.port_file.read_text().strip():
                return int(self.port_file.read_text())
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.proc.args!r} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for 127.0.0.1 (the HTTPS upstream's certificate)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench upstream CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "leaf.pem", folder / "leaf-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# ---------------------------------------------------------------------- main


def bench(args: argparse.Namespace, tmp: Path) -> None:
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed (apt-get install -y hey)")
    ca_file, cert, key = make_pki(tmp)
    me = [sys.executable, str(Path(__file__).resolve())]
    children: list[Child] = []
    mitm: subprocess.Popen[bytes] | None = None
    try:
        up = Child([*me, "--serve-upstream", str(tmp / "up.port")], tmp / "up.port")
        tls_up = Child(
            [*me, "--serve-upstream", str(tmp / "tls.port"), str(cert), str(key)],
            tmp / "tls.port",
        )
        ours = Child(
            [*me, "--serve-proxy", str(tmp / "ours.port"), str(tmp / "ca"), str(ca_file)],
            tmp / "ours.port",
        )
        children += [up, tls_up, ours]
        up_port, tls_port, our_port = up.wait_port(), tls_up.wait_port(), ours.wait_port()
        (tmp / "addon.py").write_text(ADDON)
        mitm_port = free_port()
        uvx = ["uvx"]
        if args.mitm_python:
            uvx += ["--python", args.mitm_python]
        mitm_cmd = [
            *uvx,
            "--from",
            args.mitmproxy,
            "mitmdump",
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(mitm_port),
            "-s",
            str(tmp / "addon.py"),
            "--set",
            f"confdir={tmp / 'mitm'}",
            "--set",
            f"proxyauth=valetkey:{TOKEN}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={ca_file}",
        ]
        mitm = subprocess.Popen(
            mitm_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_listening(mitm_port, mitm)
        version = subprocess.run(
            [*uvx, "--from", args.mitmproxy, "mitmdump", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")[0]
        s, c = args.seconds, args.connections
        ours_proxy = f"http://valetkey:{TOKEN}@127.0.0.1:{our_port}"
        mitm_proxy = f"http://valetkey:{TOKEN}@127.0.0.1:{mitm_port}"
        results: dict[str, dict[str, Load]] = {}
        for mode, url in (
            ("plain HTTP", f"http://127.0.0.1:{up_port}/"),
            ("intercepted HTTPS", f"https://127.0.0.1:{tls_port}/"),
        ):
            for proxy in (None, ours_proxy, mitm_proxy):  # warm-up (leaf minting, JIT-free)
                run_hey(url, 1, c, proxy)
            results[mode] = {
                "direct (baseline)": run_hey(url, s, c, None),
                "through valetkey": run_hey(url, s, c, ours_proxy),
                "through mitmproxy": run_hey(url, s, c, mitm_proxy),
            }
            if args.latency_seconds > 0:  # one connection: latency without queueing
                ls = args.latency_seconds
                results[mode + ", one connection (hey -c 1)"] = {
                    "direct (baseline)": run_hey(url, ls, 1, None),
                    "through valetkey": run_hey(url, ls, 1, ours_proxy),
                    "through mitmproxy": run_hey(url, ls, 1, mitm_proxy),
                }
    finally:
        for child in children:
            child.stop()
        if mitm is not None and mitm.poll() is None:
            mitm.send_signal(signal.SIGINT)
            try:
                mitm.wait(15)
            except subprocess.TimeoutExpired:
                mitm.kill()
                mitm.wait()

    print(
        f"\nProxy throughput: hey -z {s:g}s -c {c} -cpus 1, keep-alive; upstream: uvloop, "
        f"13-byte body; {version}"
    )
    print(f"  {'':<36}{'p50 ms':>8}{'p99 ms':>8}{'requests/s':>14}  (responses, non-200)")
    for mode, rows in results.items():
        print(f"  {mode}:")
        for name, res in rows.items():
            print(
                f"    {name:<34}{res.p50_ms:>8.2f}{res.p99_ms:>8.2f}{res.rate:>12,.0f}/s"
                f"  ({res.count}, {res.non_200})"
            )
        direct, ours_r, mitm_r = rows.values()
        ratio = ours_r.rate / mitm_r.rate
        added = ours_r.p50_ms - direct.p50_ms
        print(
            f"    valetkey / mitmproxy: {ratio:.1f}x requests/s "
            f"(goal >= 3x: {'MET' if ratio >= 3 else 'MISSED'}); added p50 over direct: "
            f"{added:+.2f} ms (mitmproxy {mitm_r.p50_ms - direct.p50_ms:+.2f})"
        )
        if mode.startswith("plain HTTP"):
            print(f"    goal added p50 <= 1 ms: {'MET' if added <= 1.0 else 'MISSED'}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-upstream":
        rest = [*sys.argv[2:], None, None]
        serve_upstream(rest[0], rest[1], rest[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-proxy":
        serve_proxy(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--latency-seconds", type=float, default=3.0, help="one-connection runs; 0: skip"
    )
    parser.add_argument(
        "--mitmproxy",
        default="mitmproxy<12.3.1",
        help="the uvx --from spec (12.3.1 needs a certifi newer than some indexes carry)",
    )
    parser.add_argument(
        "--mitm-python", default=os.environ.get("MITM_PYTHON"), help="a Python >= 3.12 for uvx"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-proxy-"))
    try:
        bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
