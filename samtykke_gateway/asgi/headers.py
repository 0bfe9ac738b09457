"""HTTP header rules shared by the middleware and the proxy (framework-free, bytes in ASGI form).

* :func:`strip_hop_by_hop` — RFC 9110 §7.6.1: ``Connection``, the headers it nominates, and the
  fixed hop-by-hop set never cross the gateway in either direction.
* :func:`check_request_framing` (from :mod:`samtykke_gateway.policy.intake`) — RFC 9112 §6.1/§6.3: a request with both ``Content-Length``
  and ``Transfer-Encoding``, a repeated or non-numeric ``Content-Length``, or a transfer coding
  other than ``chunked`` is refused (400), so the gateway and the upstream can never disagree
  on where a body ends (request smuggling).
* :func:`claim_header_value` (from :mod:`samtykke_gateway.policy.intake`) — a value copied from a verified claim into an upstream header
  must be printable ASCII without CR/LF (RFC 9110 §5.5), else the request is refused.
* :data:`CLIENT_ADDRESS_HEADERS` / :func:`peer_trusted` — headers through which a client could
  claim another address (or scheme, or host) than the connection's; they are passed on only
  from a peer in ``gateway.trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

# framework-free, so the decision (policy/) and ``explain`` use them too; re-exported here
from samtykke_gateway.policy.intake import check_request_framing, claim_header_value

__all__ = [
    "CLIENT_ADDRESS_HEADERS",
    "HOP_BY_HOP",
    "Headers",
    "check_request_framing",
    "claim_header_value",
    "is_client_address_header",
    "peer_trusted",
    "strip_hop_by_hop",
]

Headers = list[tuple[bytes, bytes]]

#: RFC 9110 §7.6.1 plus the legacy names proxies still see (RFC 2068 ``Keep-Alive``,
#: ``Proxy-Connection``) and ``Trailer``/``TE`` (RFC 9110 §6.6.2, §10.1.4).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers that name the client's address, or the scheme/host it used, as some proxy,
#: CDN or load balancer says it saw them (issue 16: all but ``X-Forwarded-*``/``Forwarded``
#: reached the upstream with a spoofed address). Lower-case; an ``_`` spelling (read by
#: CGI/WSGI-style servers as the same ``HTTP_*`` variable) counts as the same name.
CLIENT_ADDRESS_HEADERS = frozenset(
    {
        b"forwarded",  # RFC 7239
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded",
        b"forwarded-for",
        b"x-original-forwarded-for",
        b"x-real-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"client-ip",
        b"x-proxyuser-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-azure-clientip",
        b"x-azure-socketip",
        b"via",  # RFC 9110 §7.6.3: names the proxies (and their addresses) on the way
    }
)

def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop the hop-by-hop headers and every header nominated by ``Connection``.

    :param headers: ASGI-style ``(name, value)`` byte pairs, names in any case.
    :returns: a new list, order kept.
    """
    headers = list(headers)
    nominated: set[bytes] | None = None
    for name, value in headers:
        if name.lower() == b"connection":
            nominated = nominated or set()
            nominated.update(t.strip().lower() for t in value.split(b",") if t.strip())
    drop = HOP_BY_HOP | nominated if nominated else HOP_BY_HOP
    return [(n, v) for n, v in headers if n.lower() not in drop]


def is_client_address_header(name: bytes) -> bool:
    """Whether ``name`` (any case, ``_`` or ``-``) is one of :data:`CLIENT_ADDRESS_HEADERS`."""
    lname = name.lower()
    return lname in CLIENT_ADDRESS_HEADERS or (b"_" in lname and lname.replace(b"_", b"-") in CLIENT_ADDRESS_HEADERS)


def peer_trusted(client: Sequence[object] | None,
                 networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the connection's peer (ASGI ``scope["client"]``, ``(host, port)``) is inside one
    of ``networks`` (``gateway.trusted_proxies``). No peer, or one that is not an IP address
    (a Unix socket), is not trusted."""
    if not client or not networks:
        return False
    try:
        addr = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return False
    return any(addr in net for net in networks)
