"""Make test certificates for trio-tunnel with trustme: a private CA, a server certificate
for 127.0.0.1/localhost and two client certificates. For tests and trials only.

    python3 -m pip install trustme
    python3 examples/make_test_certs.py certs/
"""

from __future__ import annotations

import sys
from pathlib import Path

import trustme


def main(directory: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="trio-tunnel test CA")
    ca.cert_pem.write_to_path(str(out / "trusted-ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(out / "server-bundle.pem"))
    leaves = []
    for client_id in (1, 2):
        cert = ca.issue_cert(f"client-{client_id}.trio-tunnel.test")
        cert.private_key_and_cert_chain_pem.write_to_path(
            str(out / f"client{client_id}-bundle.pem")
        )
        leaves.append(cert.cert_chain_pems[0].bytes())
    (out / "trusted-clients.pem").write_bytes(b"".join(leaves))
    server.cert_chain_pems[0].write_to_path(str(out / "trusted-server.pem"))
    print(f"""wrote {out}/: trusted-ca.pem, server-bundle.pem, client1-bundle.pem,
client2-bundle.pem, trusted-clients.pem, trusted-server.pem

server.toml  [websocket] url = "wss://127.0.0.1:8080/"  tls_bundle = "{out}/server-bundle.pem"
             mutual_tls = true  trusted_ca = "{out}/trusted-ca.pem"
             trusted_peers = "{out}/trusted-clients.pem"
clientN.toml [websocket] url = "wss://127.0.0.1:8080/"  trusted_ca = "{out}/trusted-ca.pem"
             mutual_tls = true  tls_bundle = "{out}/clientN-bundle.pem"
             trusted_peers = "{out}/trusted-server.pem\"""")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_test_certs.py DIRECTORY")
    main(sys.argv[1])
