"""Where a request names its data subject: one class per location (docs/protocol.md §5).

A route's ``subject = { <location> = "<name>" }`` becomes one :class:`SubjectSource` subclass:
:class:`PathSubject`, :class:`HeaderSubject`, :class:`QuerySubject` or :class:`BodySubject`.
Each holds everything the gateway knows about its location, so a new location (a cookie, a form
field) is **one class here plus its entry in** :data:`LOCATIONS` — nothing else dispatches on
the location:

- its config validation (:meth:`SubjectSource.from_config`, then
  :meth:`SubjectSource.for_route` once the rest of the route is known), errors naming the key
  path (``routes[1].subject.path``);
- the names it governs or guards: query parameters whose repeats are refused
  (:attr:`~SubjectSource.governed_query_names`), query names that could shadow it
  (:attr:`~SubjectSource.shadows`), headers the gateway reads to find it
  (:attr:`~SubjectSource.read_headers`) and their ``_``/``-`` variants
  (:meth:`~SubjectSource.check_headers`);
- whether the decision must read the request body first (:attr:`~SubjectSource.needs_body`,
  asked by ``Gate.decide``);
- how it reads the value from the request facts (:meth:`~SubjectSource.values`), which
  ``policy.binding.request_subject`` then checks for presence, repetition and length.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from samtykke_gateway.config.reader import HEADER_NAME, Table
from samtykke_gateway.exceptions import BadRequestError, ConfigError, UnsupportedMediaTypeError
from samtykke_gateway.tokens.jose import MAX_JSON_DEPTH, strict_json_object

__all__ = [
    "BODY_METHODS",
    "LOCATIONS",
    "RESERVED_HEADERS",
    "BodySubject",
    "HeaderSubject",
    "PathSubject",
    "QuerySubject",
    "SubjectSource",
    "subject_from_config",
]

#: Methods whose request body a body subject can be read from.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODY_MEMBER = re.compile(r"[\w$@-]{1,128}")
_MAX_BODY_FIELD_DEPTH = 8
_BODY_GUARDED_HEADERS = frozenset({"content-type", "content-encoding"})
#: Headers neither a subject header nor the consent header may be: the credentials, framing
#: and connection headers (and the gateway's own ``X-Samtykke-*``, the claims it sends
#: upstream, by prefix). The configured consent header is refused as a subject header where it
#: is known (``config/load.py``).
RESERVED_HEADERS = frozenset({"authorization", "connection", "content-length", "transfer-encoding", "host",
                                  "content-type", "content-encoding", "te", "upgrade", "keep-alive",
                                  "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class SubjectSource:
    """Where the request names its data subject (one subclass per location).

    ``source``: the location's config key (``"path"``, ``"header"``, ``"query"``, ``"body"``);
    ``name``: what the route's config gave (a header name lower-cased); ``party``: the one kind
    of data subject the route serves (``"person"``: 11 digits, ``"organization"``: 9 digits),
    ``None`` for either (``subject = { path = "fnr", party = "person" }``).
    """

    #: the config key of this location: ``subject = { <source> = "<name>" }``
    source: ClassVar[str]
    #: whether the decision must read the whole request body before it can find the subject
    needs_body: ClassVar[bool] = False
    #: the reason a repeated value gets (400): two values, and which one the data API reads
    #: is not the gateway's to guess
    repeated_reason: ClassVar[str] = "duplicate_parameter"
    repeated_detail: ClassVar[str] = "the data subject parameter is repeated"

    name: str
    party: str | None = None

    @classmethod
    def from_config(cls, name: str, key: str, path_params: set[str]) -> SubjectSource:
        """The location as configured, checked on its own.

        :param key: the key path for errors (``routes[1].subject.path``).
        :param path_params: the route template's parameter names.
        :raises ConfigError: naming ``key``.
        """
        return cls(name)

    def for_route(self, methods: frozenset[str], governed_query: frozenset[str],
                  path_params: frozenset[str], key: str) -> SubjectSource:
        """The location checked against the rest of its route (``methods``, the query names a
        year or period constraint governs, the template's parameters); may return a copy that
        keeps what reading needs. :raises ConfigError: naming ``key`` (``routes[1].subject``)."""
        return self

    @property
    def governed_query_names(self) -> frozenset[str]:
        """Query parameters this location reads (a repeat is refused, 400)."""
        return frozenset()

    @property
    def shadows(self) -> frozenset[str]:
        """Lower-cased query names refused because a framework merging query and body values
        could read one of them as the subject (``ambiguous_parameter``)."""
        return frozenset()

    @property
    def read_headers(self) -> frozenset[str]:
        """Lower-cased headers the gateway reads to find the subject: ``Connection`` must not
        nominate them (they would be dropped before the upstream)."""
        return frozenset()

    @property
    def underscored_headers(self) -> frozenset[str]:
        """Lower-cased headers whose ``_`` spelling (``Content_Type``) is refused: a CGI-style
        upstream reads it as the header itself."""
        return frozenset()

    def check_headers(self, headers: Mapping[str, list[str]]) -> None:
        """Refuse headers that could name the subject to the upstream in another spelling.
        :raises BadRequestError: (400, ``ambiguous_header``)."""

    def values(
        self,
        path_params: Mapping[str, str],
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, list[str]],
        body: bytes | None,
    ) -> list[str]:
        """Every value the request gives at this location (raw strings; the caller refuses
        none, several, an empty one or an over-long one).

        :param path_params: the matched template parameters; ``query``: decoded pairs in order;
            ``headers``: lower-cased name → values; ``body``: the whole request body when
            :attr:`needs_body`, else ``None``.
        :raises BadRequestError: (400) the location cannot be read (a body that is not JSON).
        :raises UnsupportedMediaTypeError: (415) a body in another media type.
        """
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class PathSubject(SubjectSource):
    """``subject = { path = "fnr" }``: a parameter of the route's path template."""

    source: ClassVar[str] = "path"

    @classmethod
    def from_config(cls, name: str, key: str, path_params: set[str]) -> SubjectSource:
        if name not in path_params:
            raise ConfigError(key, f"{{{name}}} is not a parameter of the route path")
        return cls(name)

    def values(self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]],
               headers: Mapping[str, list[str]], body: bytes | None) -> list[str]:
        return [path_params.get(self.name, "")]


@dataclass(frozen=True, slots=True)
class QuerySubject(SubjectSource):
    """``subject = { query = "fnr" }``: a query parameter (exact name; a repeat is refused)."""

    source: ClassVar[str] = "query"

    @property
    def governed_query_names(self) -> frozenset[str]:
        return frozenset({self.name})

    def values(self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]],
               headers: Mapping[str, list[str]], body: bytes | None) -> list[str]:
        name = self.name
        return [v for k, v in query if k == name]


@dataclass(frozen=True, slots=True)
class HeaderSubject(SubjectSource):
    """``subject = { header = "NAV-Personident" }``: a request header (name lower-cased)."""

    source: ClassVar[str] = "header"
    repeated_reason: ClassVar[str] = "ambiguous_header"
    repeated_detail: ClassVar[str] = "the data subject header is repeated"

    @classmethod
    def from_config(cls, name: str, key: str, path_params: set[str]) -> SubjectSource:
        if not HEADER_NAME.fullmatch(name):
            raise ConfigError(key, "is not a valid header name")
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith("x-samtykke-"):
            raise ConfigError(key, f"{name} is a header the gateway or HTTP itself uses, not one that can name"
                                   " the data subject")
        return cls(lower)

    @property
    def read_headers(self) -> frozenset[str]:
        return frozenset({self.name})

    def check_headers(self, headers: Mapping[str, list[str]]) -> None:
        """A header differing from the subject header only by ``_``/``-`` (CGI, PHP and nginx
        with ``underscores_in_headers`` read ``NAV_PersonIdent`` as ``NAV-PersonIdent``)."""
        own = self.name
        folded = own.replace("_", "-")
        for name in headers:
            if name != own and name.replace("_", "-") == folded:
                raise BadRequestError("a header differs from the subject header only by '_'/'-'",
                                      reason="ambiguous_header")

    def values(self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]],
               headers: Mapping[str, list[str]], body: bytes | None) -> list[str]:
        return headers.get(self.name, [])


@dataclass(frozen=True, slots=True)
class BodySubject(SubjectSource):
    """``subject = { body = "fnr" }`` or ``{ body = "person.ident" }``: a member (or a dotted
    path into nested objects) of the JSON request body.

    ``field_path``: the components; ``shadows``: the lower-cased names a query parameter must
    not carry (the last component and every leading path, ``person`` and ``person.ident``:
    frameworks merge query and body values, some shallowly, so a query ``person`` replaces the
    whole object); ``reserved``: lower-cased names the body's top-level object must not carry
    in any case (the route's path parameters and governed query parameters, set by
    :meth:`for_route`).
    """

    source: ClassVar[str] = "body"
    needs_body: ClassVar[bool] = True

    field_path: tuple[str, ...] = ()
    body_shadows: frozenset[str] = frozenset()
    reserved: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, name: str, key: str, path_params: set[str]) -> SubjectSource:
        parts = tuple(name.split("."))
        if len(parts) > _MAX_BODY_FIELD_DEPTH or not all(_BODY_MEMBER.fullmatch(p) for p in parts):
            raise ConfigError(key, f"must be a member name or a dotted path of at most {_MAX_BODY_FIELD_DEPTH}"
                                   " names (letters, digits, _ $ @ -)")
        lowered = [p.lower() for p in parts]
        # the leaf and every leading path (person, person.ident): a merged query or route value
        # with one of these names can replace the field or an object holding it
        shadows = frozenset({lowered[-1], *(".".join(lowered[:i]) for i in range(1, len(lowered) + 1))})
        for param in path_params:
            if param.lower() in shadows:
                raise ConfigError(key, f"{{{param}}} is also a path parameter: frameworks that merge route and"
                                       " body values could read the other one")
        return cls(name, field_path=parts, body_shadows=shadows)

    def for_route(self, methods: frozenset[str], governed_query: frozenset[str],
                  path_params: frozenset[str], key: str) -> SubjectSource:
        if not methods <= BODY_METHODS:
            raise ConfigError(key.rsplit(".", 1)[0] + ".method",
                              "a body subject needs POST, PUT or PATCH only"
                              " (GET, HEAD, DELETE and OPTIONS carry no body the gateway reads)")
        governed = frozenset(n.lower() for n in governed_query)
        if governed & self.body_shadows:
            raise ConfigError(f"{key}.body", "is also a governed query parameter of the route")
        return dataclasses.replace(self, reserved=governed | frozenset(n.lower() for n in path_params))

    @property
    def shadows(self) -> frozenset[str]:
        return self.body_shadows

    @property
    def read_headers(self) -> frozenset[str]:
        return _BODY_GUARDED_HEADERS  # the body was checked as read under these

    @property
    def underscored_headers(self) -> frozenset[str]:
        return _BODY_GUARDED_HEADERS

    def values(self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]],
               headers: Mapping[str, list[str]], body: bytes | None) -> list[str]:
        return [self.read(headers, body)]

    def read(self, headers: Mapping[str, list[str]], body: bytes | None) -> str:
        """The subject member of a JSON request body.

        Strict: ``application/json`` (UTF-8), a JSON object with no duplicate member names at
        any depth (:func:`~samtykke_gateway.tokens.jose.strict_json_object`, nesting bounded),
        the member a JSON string, and no sibling of any member on the path whose name differs
        only in case or by what follows a NUL (ASP.NET Core binds JSON case-insensitively,
        C-string readers end a name at NUL: either could read the other one); the top-level
        object must not carry a :attr:`reserved` name in any case (frameworks that merge body,
        query and route values, such as Laravel's ``input()`` or Rails' ``params``, could read
        the body's value instead of the one the gateway checked). The body itself is never
        changed: the caller forwards the bytes that were checked.

        :raises UnsupportedMediaTypeError: (415, ``unsupported_media_type``).
        :raises BadRequestError: (400) ``body_not_json``, ``duplicate_member``,
            ``ambiguous_parameter``, ``subject_missing``, ``subject_malformed``.
        """
        if body is None:
            raise BadRequestError("the request body must name the data subject", reason="subject_missing")
        _json_content_type(headers)
        try:
            top = strict_json_object(body, max_depth=MAX_JSON_DEPTH)
        except ValueError as exc:
            if str(exc) == "duplicate member name":
                raise BadRequestError("a member name is repeated in the request body",
                                      reason="duplicate_member") from None
            raise BadRequestError("the request body is not a JSON object (UTF-8, bounded nesting)",
                                  reason="body_not_json") from None
        reserved = self.reserved
        if any(_same_ignoring_case(key, name) for key in top for name in reserved):
            raise BadRequestError("a request body member names a path or governed query parameter of the route",
                                  reason="ambiguous_parameter")
        node: object = top
        for part in self.field_path:
            if type(node) is not dict or part not in node:
                raise BadRequestError("the request body does not name the data subject", reason="subject_missing")
            if any(key != part and _same_ignoring_case(key, part) for key in node):
                raise BadRequestError(
                    "a request body member differs from the subject field only in case or after a NUL",
                    reason="ambiguous_parameter")
            node = node[part]
        if type(node) is not str:  # a number would lose leading zeros
            raise BadRequestError("the data subject must be a JSON string", reason="subject_malformed")
        path = self.field_path
        # besides the nested member, a top-level member literally named "person.ident": lookups
        # such as lodash _.get or Laravel Arr::get read that one instead
        dotted = [".".join(path[:i]) for i in range(2, len(path) + 1)]
        if dotted and any(_same_ignoring_case(key, name) for key in top for name in dotted):
            raise BadRequestError("a request body member is named like the dotted path to the subject",
                                  reason="ambiguous_parameter")
        return node


def _json_content_type(headers: Mapping[str, list[str]]) -> None:
    """``Content-Type: application/json`` (parameters allowed; a charset only ``utf-8``), once,
    and no content coding other than ``identity``: the upstream must read the same text."""
    values = headers.get("content-type", [])
    if len(values) != 1:
        raise UnsupportedMediaTypeError("the request body must be sent as application/json")
    media, _, params = values[0].partition(";")
    if media.strip().lower() != "application/json":
        raise UnsupportedMediaTypeError("the request body must be sent as application/json")
    for param in params.split(";"):
        pname, _, pvalue = param.partition("=")
        if pname.strip().lower() == "charset" and pvalue.strip().strip('"').lower() != "utf-8":
            raise UnsupportedMediaTypeError("the request body must be UTF-8 JSON")
    for coding in headers.get("content-encoding", []):
        if coding.strip().lower() not in ("", "identity"):
            raise UnsupportedMediaTypeError("a request body with a content coding is not read here")


def _same_ignoring_case(a: str, b: str) -> bool:
    # Frameworks fold case differently (.NET: per-character upper case; Python: casefold):
    # any of them calling two names equal makes them one name to some reader. Readers that
    # keep names as C strings (cJSON and the like) end a name at its first NUL.
    a = a.split("\0", 1)[0]
    return a.lower() == b.lower() or a.upper() == b.upper() or a.casefold() == b.casefold()


#: config key → location class; the one list of subject locations.
LOCATIONS: Mapping[str, type[SubjectSource]] = {
    cls.source: cls for cls in (PathSubject, HeaderSubject, QuerySubject, BodySubject)
}


def subject_from_config(value: Any, key: str, path_params: set[str]) -> SubjectSource:
    """``subject = { <location> = "<name>" }`` → its :class:`SubjectSource`, checked on its own
    (:meth:`SubjectSource.for_route` then checks it against the route).

    :param value: the route's ``subject`` table: exactly one key of :data:`LOCATIONS`, and
        optionally ``party`` (``"person"`` or ``"organization"``).
    :raises ConfigError: naming ``key`` or ``key.<location>``.
    """
    t = Table(value, key)
    given = [(source, t.get(source, str)) for source in LOCATIONS]
    party = t.get("party", str)
    t.finish()
    named = [(source, name) for source, name in given if name is not None]
    if len(named) != 1:
        *first, last = LOCATIONS
        raise ConfigError(key, f"give exactly one of {', '.join(first)} or {last}")
    if party not in (None, "person", "organization"):
        raise ConfigError(f"{key}.party", "must be 'person' or 'organization' (leave it out for either)")
    source, name = named[0]
    located = LOCATIONS[source].from_config(name, f"{key}.{source}", path_params)
    return located if party is None else dataclasses.replace(located, party=party)
