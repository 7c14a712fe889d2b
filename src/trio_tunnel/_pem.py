"""PEM files as operators build them: blocks in any order, keys where they do not belong.

Pure (no I/O but reading the one file asked for, no ssl context): the TLS module loads what
this module orders. A key-and-certificate bundle such as tcp-over-websocket's README builds
(``cat Root.crt CA.crt MyServerCert.{crt,key} > key-cert-ca-root-chain.pem``) is taken apart
into its private key, the certificate whose public key matches that key (the leaf), and the
leaf's chain, ordered by issuer links (leaf first), which is the order TLS sends them in.

Files of trusted CAs and pinned certificates may hold keys too (the same bundle reused): the
keys are ignored there, and the caller gets a note saying so.

The ``cryptography`` package does the parsing: matching a key to its certificate must compare
public keys exactly, and chain links are checked by signature, not only by name.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Final

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "Bundle",
    "Note",
    "PemBlock",
    "TrustedCertificates",
    "load_bundle",
    "load_trusted",
    "order_bundle",
    "read_blocks",
    "trusted_certificates",
]

CERTIFICATE: Final = "CERTIFICATE"
# The labels OpenSSL and others write private keys under (RFC 7468 and the legacy ones).
KEY_LABELS: Final = frozenset(
    {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY", "OPENSSH PRIVATE KEY"}
)
ENCRYPTED_KEY_LABEL: Final = "ENCRYPTED PRIVATE KEY"
# Blocks seen next to keys and certificates that carry nothing a TLS endpoint needs here
# (``openssl ecparam -genkey`` writes EC PARAMETERS before the key).
_HARMLESS_LABELS: Final = frozenset({"EC PARAMETERS", "DH PARAMETERS", "X509 CRL", "PUBLIC KEY"})
_MAX_FILE_BYTES: Final = 1024 * 1024  # a bundle is a few KiB; refuse to slurp a disk image

_BEGIN = re.compile(r"^-----BEGIN ([A-Z0-9 ]+)-----[ \t\r]*$", re.MULTILINE)
_END = "-----END {}-----"
_HEADER = re.compile(r"^[A-Za-z-]+:.*$")  # RFC 1421 headers (Proc-Type, DEK-Info)


@attrs.frozen
class Note:
    """Something about a file worth telling its operator; ``warning`` if it may be a mistake."""

    text: str
    warning: bool = True

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class PemBlock:
    label: str
    text: str  # the whole block, BEGIN to END line, with a final newline
    der: bytes
    line: int  # where its BEGIN line is (1-based), for messages
    headers: tuple[str, ...] = ()


def read_blocks(text: str) -> list[PemBlock]:
    """Every PEM block of ``text`` in order; ``ValueError`` naming the line if one is broken.

    Text between blocks (comments, ``openssl x509 -text`` output) is ignored, as OpenSSL does.
    """
    blocks: list[PemBlock] = []
    position = 0
    while (begin := _BEGIN.search(text, position)) is not None:
        label = begin[1]
        line = text.count("\n", 0, begin.start()) + 1
        end_marker = _END.format(label)
        end = text.find(end_marker, begin.end())
        if end < 0:
            raise ValueError(f"line {line}: {label} block has no {end_marker!r} line")
        body_lines = [part.strip() for part in text[begin.end() : end].splitlines()]
        headers = tuple(part for part in body_lines if _HEADER.fullmatch(part))
        payload = "".join(part for part in body_lines if part and part not in headers)
        try:
            der = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"line {line}: {label} block is not valid base64") from None
        position = end + len(end_marker)
        block_text = text[begin.start() : position] + "\n"
        blocks.append(PemBlock(label, block_text, der, line, headers))
    return blocks


def _read(path: str) -> str:
    with open(path, "rb") as file:
        data = file.read(_MAX_FILE_BYTES + 1)
    if len(data) > _MAX_FILE_BYTES:
        raise ValueError(f"larger than {_MAX_FILE_BYTES // 1024} KiB: not a PEM bundle")
    # PEM is ASCII; anything else between blocks is commentary and may be in any encoding.
    return data.decode("ascii", errors="replace")


def _certificate(block: PemBlock) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(block.der)
    except ValueError as exc:
        raise ValueError(f"line {block.line}: malformed certificate ({exc})") from None


def _public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names must match and the signature must verify)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


# --- key + certificate + chain bundles --------------------------------------------------------


@attrs.frozen
class Bundle:
    """A private key, its certificate (``chain[0]``) and the rest of the chain, in order."""

    key_pem: str
    chain: tuple[x509.Certificate, ...]
    notes: tuple[Note, ...] = ()  # what was left out or reordered, for a log line or `check`

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def pem(self) -> bytes:
        """Key, leaf, then chain: the one layout ``ssl.SSLContext.load_cert_chain`` reads."""
        certs = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.chain)
        return self.key_pem.encode("ascii") + certs


def order_bundle(text: str) -> Bundle:
    """Find the key, its certificate and that certificate's chain among ``text``'s blocks.

    ``ValueError`` with the reason when there is no key, more than one key, an encrypted key,
    or no certificate whose public key matches the key.
    """
    blocks = read_blocks(text)
    notes: list[Note] = []
    keys = [block for block in blocks if block.label in KEY_LABELS]
    encrypted = [
        block
        for block in blocks
        if block.label == ENCRYPTED_KEY_LABEL or any("ENCRYPTED" in h for h in block.headers)
    ]
    if encrypted:
        raise ValueError(
            f"line {encrypted[0].line}: the private key is encrypted; trio-tunnel needs it"
            " unencrypted (decrypt it with `openssl pkey -in KEY -out KEY.pem` and keep the"
            " file readable by the tunnel's user only)"
        )
    if not keys:
        raise ValueError("no private key in it (expected a PEM block '-----BEGIN PRIVATE KEY')")
    if len(keys) > 1:
        lines = ", ".join(str(block.line) for block in keys)
        raise ValueError(f"more than one private key (at lines {lines}); keep only this side's")
    key_block = keys[0]
    if key_block.label == "OPENSSH PRIVATE KEY":
        raise ValueError(
            f"line {key_block.line}: an OpenSSH key, not a TLS key (convert it to PKCS#8 PEM)"
        )
    try:
        key = serialization.load_pem_private_key(key_block.text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"line {key_block.line}: unreadable private key ({exc})") from None
    certs = [_certificate(block) for block in blocks if block.label == CERTIFICATE]
    if not certs:
        raise ValueError("no certificate in it (expected the key's certificate and its chain)")
    unique = list(dict.fromkeys(certs))
    if len(unique) < len(certs):
        notes.append(Note(f"{len(certs) - len(unique)} repeated certificate(s) ignored", False))
    key_public = _public_der(key)
    matching = [cert for cert in unique if _public_der(cert) == key_public]
    if not matching:
        subjects = "; ".join(_describe(cert) for cert in unique)
        raise ValueError(
            f"no certificate matches the private key (the certificates are for: {subjects})"
        )
    # Several certificates of one key (a renewal kept next to the old one): take the newest.
    leaf = max(matching, key=lambda cert: cert.not_valid_before_utc)
    if len(matching) > 1:
        notes.append(
            Note(
                f"{len(matching)} certificates match the key; using the newest"
                f" ({_describe(leaf)}, valid from {leaf.not_valid_before_utc:%Y-%m-%d})"
            )
        )
    chain = [leaf]
    rest = [cert for cert in unique if cert is not leaf and cert not in matching]
    while not _self_signed(chain[-1]):
        issuer = next((cert for cert in rest if _issued_by(chain[-1], cert)), None)
        if issuer is None:
            break
        chain.append(issuer)
        rest.remove(issuer)
    if rest:
        notes.append(
            Note(
                f"{len(rest)} certificate(s) not in the chain of {_describe(leaf)} left out: "
                + "; ".join(_describe(cert) for cert in rest)
            )
        )
    # OpenSSL takes the first certificate of the file as the leaf, then the rest in order.
    given = list(dict.fromkeys(cert for cert in certs if cert in chain))
    if given != chain:
        notes.append(Note("certificates reordered as leaf, then its chain", warning=False))
    notes += _other_blocks(blocks, allowed=(*KEY_LABELS, CERTIFICATE))
    return Bundle(key_block.text, tuple(chain), tuple(notes))


def _other_blocks(blocks: Sequence[PemBlock], allowed: Sequence[str]) -> list[Note]:
    others = [block for block in blocks if block.label not in allowed]
    return [
        Note(f"line {block.line}: {block.label} block ignored", block.label not in _HARMLESS_LABELS)
        for block in others
    ]


def load_bundle(path: str) -> Bundle:
    """:func:`order_bundle` of the file at ``path`` (``ValueError`` says why, not where)."""
    try:
        return order_bundle(_read(path))
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from None


# --- files of certificates only: trusted CAs, pinned peers ------------------------------------


@attrs.frozen
class TrustedCertificates:
    certs: tuple[x509.Certificate, ...]
    notes: tuple[Note, ...] = ()

    def pem(self) -> str:
        """The certificates alone, for ``SSLContext.load_verify_locations(cadata=...)``."""
        return "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in self.certs
        )

    def der_certs(self) -> list[bytes]:
        return [cert.public_bytes(serialization.Encoding.DER) for cert in self.certs]


def trusted_certificates(text: str) -> TrustedCertificates:
    """The certificates of ``text``; private keys and other blocks are ignored, with a note."""
    blocks = read_blocks(text)
    notes: list[Note] = []
    secret = [b for b in blocks if b.label in KEY_LABELS or b.label == ENCRYPTED_KEY_LABEL]
    if secret:
        lines = ", ".join(str(block.line) for block in secret)
        notes.append(
            Note(
                f"private key ignored (line {lines}): this file only needs certificates; keep"
                " keys out of files that other hosts get"
            )
        )
    allowed = (*KEY_LABELS, ENCRYPTED_KEY_LABEL, CERTIFICATE)
    notes += _other_blocks(blocks, allowed=allowed)
    certs = [_certificate(block) for block in blocks if block.label == CERTIFICATE]
    if not certs:
        raise ValueError("no PEM certificate found")
    unique = tuple(dict.fromkeys(certs))
    return TrustedCertificates(unique, tuple(notes))


def load_trusted(path: str) -> TrustedCertificates:
    """:func:`trusted_certificates` of the file at ``path`` (``ValueError`` says why)."""
    try:
        return trusted_certificates(_read(path))
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from None
