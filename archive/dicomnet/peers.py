"""Who a DICOM peer is: the addresses a node may call from, and the certificate it must show.

A ``RemoteNode`` is accepted only from its registered addresses: the
``addresses`` field (IP addresses, CIDR networks and host names, separated by
spaces or commas) or, when that is blank, its ``host``. A host name is
resolved when a peer calls, and the answer is kept for
:data:`RESOLVE_CACHE_SECONDS` so that a burst of associations does not become
a burst of DNS queries (and a changed DNS record takes effect within a minute).

On the DICOM TLS port the node must also present its own client certificate:
the SHA-256 of the certificate in DER form, as ``openssl x509 -noout
-fingerprint -sha256`` prints it (colons and case do not matter).

A leaf module: no ORM, so that the model's validation and the listener share
it. The listener's TLS context is built here too (:func:`tls_server_context`),
for the listener and for the system check that reads the same files.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable

from django.utils.translation import gettext as _

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS answer is kept this long; a failed resolution for less, so that a
# registered name that does not resolve yet is retried soon.
RESOLVE_CACHE_SECONDS = 60.0
RESOLVE_FAILURE_CACHE_SECONDS = 10.0

_SEPARATORS = re.compile(r"[\s,;]+")
# RFC 1123 host names: labels of letters, digits and hyphens, not starting or
# ending with a hyphen, 63 characters at most each, 253 in all.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def address_entries(text: str) -> list[str]:
    """The entries of an ``addresses`` field, in order."""
    return [entry for entry in _SEPARATORS.split(text or "") if entry]


def _is_host_name(entry: str) -> bool:
    name = entry[:-1] if entry.endswith(".") else entry
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # All digits and dots is a malformed IPv4 address, not a name.
    if all(label.isdigit() for label in labels):
        return False
    return all(_LABEL.match(label) for label in labels)


def address_entry_error(entry: str) -> str | None:
    """Why ``entry`` is not an IP address, a CIDR network or a host name; None when it is one."""
    if "/" in entry and peer_ip(entry.split("/", 1)[0]) is not None:
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                network = ipaddress.ip_network(entry, strict=False)
                return _("«%(entry)s»: la rete ha bit di host impostati (forse intendeva %(network)s).") % {
                    "entry": entry,
                    "network": network,
                }
            return _("«%(entry)s» non è una rete in notazione CIDR valida.") % {"entry": entry}
        return None
    try:
        ipaddress.ip_address(entry)
        return None
    except ValueError:
        pass
    if _is_host_name(entry):
        return None
    return _("«%(entry)s» non è un indirizzo IP, una rete CIDR o un nome di host valido.") % {"entry": entry}


def addresses_errors(text: str) -> list[str]:
    """One message per bad entry of an ``addresses`` field (empty: the field is valid)."""
    return [error for entry in address_entries(text) if (error := address_entry_error(entry)) is not None]


def peer_ip(address: str) -> IPAddress | None:
    """The peer's address as an IP address; an IPv4 address seen through a dual-stack
    socket (``::ffff:10.1.2.3``) as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_resolved: dict[str, tuple[float, frozenset[IPAddress]]] = {}
_resolved_lock = threading.Lock()


def resolve(name: str) -> frozenset[IPAddress]:
    """The addresses ``name`` resolves to (empty when it does not), cached briefly."""
    key = name.lower().rstrip(".")
    now = time.monotonic()
    with _resolved_lock:
        cached = _resolved.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
    try:
        infos = socket.getaddrinfo(key, None, type=socket.SOCK_STREAM)
        found = frozenset(ip for info in infos if (ip := peer_ip(str(info[4][0]))) is not None)
        ttl = RESOLVE_CACHE_SECONDS
    except (OSError, UnicodeError) as exc:
        logger.warning("the registered host name %r does not resolve: %s", name, exc)
        found, ttl = frozenset(), RESOLVE_FAILURE_CACHE_SECONDS
    with _resolved_lock:
        _resolved[key] = (now + ttl, found)
    return found


def resolve_cache_clear() -> None:
    with _resolved_lock:
        _resolved.clear()


def address_allowed(address: str, entries: Iterable[str]) -> bool:
    """Whether a peer calling from ``address`` matches one of ``entries`` (IP addresses,
    CIDR networks, host names). A malformed entry matches nothing."""
    ip = peer_ip(address)
    if ip is None:
        return False
    for entry in entries:
        if "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
            continue
        entry_ip = peer_ip(entry)
        if entry_ip is not None:
            if entry_ip == ip:
                return True
        elif _is_host_name(entry) and ip in resolve(entry):
            return True
    return False


def fingerprint_normalize(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (``AB:CD:...`` accepted);
    the text unchanged when it is not one."""
    compact = re.sub(r"[\s:]", "", text or "").lower()
    if compact.startswith("sha256fingerprint="):
        compact = compact[len("sha256fingerprint=") :]
    return compact if _FINGERPRINT.match(compact) else (text or "").strip()


def fingerprint_error(text: str) -> str | None:
    if not text or _FINGERPRINT.match(fingerprint_normalize(text)):
        return None
    return _(
        "L'impronta deve essere lo SHA-256 del certificato (64 cifre esadecimali, come la stampa "
        "«openssl x509 -noout -fingerprint -sha256»)."
    )


def certificate_sha256(der: bytes) -> str:
    """The fingerprint of a certificate in DER form."""
    return hashlib.sha256(der).hexdigest()


def tls_server_context(*, cert: str, key: str, ca: str, key_passphrase: str = "") -> ssl.SSLContext:
    """The listener's TLS context: its certificate and key, TLS 1.2 or later (BCP 195,
    as the DICOM Secure Transport Connection profiles ask), and a client
    certificate required and verified against ``ca``.

    Raises ``OSError`` or ``ssl.SSLError`` when a file cannot be read or the key
    does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key, password=key_passphrase or None)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
