"""
Scan lbproxy's TLS with sslyze against Mozilla's TLS configuration.

    python bench/tls_scan.py [--tls-min 1.2|1.3] [--sslyze COMMAND]

Starts C{twistd -n lbproxy} (the one next to this Python) on a free loopback
port with a new ECDSA P-256 certificate from a new local CA, valid for 90
days (Mozilla's recommended lifespan), runs
C{sslyze --mozilla_config=intermediate} (or C{modern} with C{--tls-min 1.3})
against it, trusting that CA, prints sslyze's compliance section and a
last line C{verdict: ...}, and stops lbproxy.

sslyze pins an older C{cryptography} than lbproxy needs, so it usually lives
in a virtualenv of its own: C{python3 -m venv /tmp/sslyze && /tmp/sslyze/bin/pip
install sslyze}, then C{--sslyze /tmp/sslyze/bin/sslyze} (or put C{sslyze} on
C{PATH}, or set C{SSLYZE}).

Exit status: 0 compliant, 1 not compliant, 2 bad usage, 3 sslyze not found or
lbproxy did not start.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from lbproxy import certs

READY = "lbproxy balancing over"
START_DEADLINE = 30.0
SCAN_DEADLINE = 300.0


def findSSLyze(given: str | None) -> list[str] | None:
    """
    The command that runs sslyze: C{given}, C{$SSLYZE}, C{sslyze} on
    C{PATH}, or this Python's C{-m sslyze}; L{None} if there is none.
    """
    for candidate in [given, os.environ.get("SSLYZE"), shutil.which("sslyze")]:
        if candidate:
            return [candidate]
    try:
        import sslyze  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "sslyze"]


def freePort() -> int:
    """
    A loopback port nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def writeCertificates(directory: str) -> tuple[str, str, str]:
    """
    Write a CA and a 90-day server certificate for C{localhost}.

    @return: the paths of the CA certificate, server key and server
        certificate.
    """
    caKey, caCert = certs.makeCertificateAuthority()
    key, cert = certs.makeServerCertificate(
        caKey, caCert, ["localhost", "127.0.0.1"], validity=datetime.timedelta(days=90)
    )
    paths = []
    for name, content in [
        ("ca.crt", certs.certificatePEM(caCert)),
        ("server.key", certs.privateKeyPEM(key)),
        ("server.crt", certs.certificatePEM(cert)),
    ]:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(content)
        paths.append(path)
    return paths[0], paths[1], paths[2]


def startLBProxy(
    directory: str, key: str, cert: str, port: int, tlsMin: str
) -> subprocess.Popen[str]:
    """
    Start C{twistd -n lbproxy} listening with TLS on C{port}; return once it
    says it is listening.

    @raise RuntimeError: if it exits or says nothing within the deadline.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "lbproxy",
            "--listen",
            f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            "--backends",
            "127.0.0.1:9",
            "--health-interval",
            "0",
            "--tls-min",
            tlsMin,
            "--hsts",
            "63072000",
        ],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if READY in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(START_DEADLINE) or process.poll() is not None:
        process.kill()
        raise RuntimeError("lbproxy did not start:\n" + "".join(output))
    return process


def complianceSection(report: str) -> str:
    """
    The part of sslyze's report from its compliance heading on.
    """
    index = report.find("COMPLIANCE AGAINST")
    return report[index:].rstrip() if index >= 0 else report.rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--tls-min", choices=["1.2", "1.3"], default="1.2")
    parser.add_argument("--sslyze", help="the sslyze command (default: see above)")
    options = parser.parse_args(argv)
    sslyze = findSSLyze(options.sslyze)
    if sslyze is None:
        print("sslyze not found: pip install sslyze (see --help)", file=sys.stderr)
        return 3
    profile = "modern" if options.tls_min == "1.3" else "intermediate"
    with tempfile.TemporaryDirectory(prefix="lbproxy-tls-scan-") as directory:
        caFile, key, cert = writeCertificates(directory)
        port = freePort()
        try:
            process = startLBProxy(directory, key, cert, port, options.tls_min)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 3
        try:
            command = [
                *sslyze,
                f"--mozilla_config={profile}",
                f"--certinfo_ca_file={caFile}",
                f"localhost:{port}{{127.0.0.1}}",
            ]
            scan = subprocess.run(
                command, capture_output=True, text=True, timeout=SCAN_DEADLINE, check=False
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    # sslyze's warnings about its own trust stores go to stderr; show them
    # only if the report itself is missing.
    report = scan.stdout if "COMPLIANCE AGAINST" in scan.stdout else scan.stdout + scan.stderr
    print(f"$ {' '.join(['sslyze', *command[len(sslyze) :]])}")
    print(complianceSection(report))
    compliant = "FAILED - Not compliant" not in report and ": OK - Compliant" in report
    print(f"verdict: {'compliant' if compliant else 'NOT compliant'} with Mozilla {profile}")
    return 0 if compliant else 1


if __name__ == "__main__":
    raise SystemExit(main())
