"""Keep credentials out of the log.

Every value of a log row passes :meth:`Redactor.row` before it is stored: the one
place, so a new column cannot escape it. What it removes:

- credential headers (``Authorization``, ``Proxy-Authorization``, ``WWW-Authenticate``,
  ``Proxy-Authenticate``, ``Cookie``, ``Set-Cookie``, ``X-BackEndCookie``, ...) keep only
  their scheme or cookie names, wherever they appear: header columns, an ``http-status``
  fault's ``headers`` in the ``fault`` column, header lines inside a body;
- in every text (bodies, decoded ``args`` / ``result`` / ``fault`` strings, ``error``,
  the path, header values): Bearer tokens, JWTs, Basic credentials (base64 of
  ``user:password`` after ``Basic``), NTLM / Negotiate blobs, password and token
  values (``<Password>..</Password>``, ``password="..."``, ``password=...``,
  ``"password": "..."``, ``access_token=...``), also under a longer key holding such a name
  (``newPassword=``, ``<t:NewPassword>``, a header ``X-User-Password``);
- the user's own rules: header names (``--redact-header``) whose whole value goes, and
  regular expressions (``--redact-pattern``) whose matches go, in every text.

``keep_secrets`` turns the built-in rules off; the user's own rules still apply.
Plain functions of strings: any serving front uses them alike.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .memo import keep

REDACTED = "<redacted>"

#: Headers whose value is a credential: scheme kept, token dropped.
AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"})
#: Headers whose value is cookies: names kept, values dropped.
COOKIE_HEADERS = frozenset({"cookie", "set-cookie"})
#: Headers whose whole value is secret.
SECRET_HEADERS = frozenset({"x-backendcookie", "x-ms-cookie", "x-owa-canary", "x-anchormailbox-token"})
SENSITIVE_HEADERS = AUTH_HEADERS | COOKIE_HEADERS | SECRET_HEADERS

_TOKEN68 = r"[A-Za-z0-9\-._~+/]"
_BEARER = re.compile(rf"\b(Bearer)\s+{_TOKEN68}+=*", re.IGNORECASE)
# In a body "Bearer" may be prose ("Bearer of good news"); a real token is long.
_BEARER_IN_TEXT = re.compile(rf"\b(Bearer)\s+{_TOKEN68}{{16,}}=*", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*")
_BASIC = re.compile(r"\b(Basic)\s+([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])", re.IGNORECASE)
_NTLM = re.compile(r"\b(NTLM|Negotiate|Kerberos)\s+[A-Za-z0-9+/]{12,}={0,2}", re.IGNORECASE)
# base64 of "NTLMSSP\0": an NTLM message wherever it stands.
_NTLM_BARE = re.compile(r"TlRMTVNTUA[A-Za-z0-9+/]*={0,2}")
# Names a secret value goes by, as a key (password=..., "password": ...) or an XML element.
# One rule for every form: a key (or element, or header) whose name CONTAINS such a name is a
# secret's key: newPassword=, "new_password":, user[password]=, <t:NewPassword>, X-User-Password:,
# password2=, and password\xff= (a byte that is not text, kept as U+DCFF: the name is still
# there). What ends a key is the punctuation of the formats the rules read, not a letter.
_SECRET_NAMES = r"(?:password|passwd|pwd|client_secret|clientsecret|access_token|refresh_token|id_token)"
_SECRET_KEY = re.compile(rf"{_SECRET_NAMES}", re.IGNORECASE)
# The rest of a key after a secret's name, up to its ":" or "=" (at most 64 characters: bounded work).
_KEY_REST = r"""[^\s=:&;,"'<>?/{}]{0,64}?"""
_SECRET_ELEMENT = re.compile(
    rf"(<(?:[\w.-]+:)?([\w.-]{{0,64}}?(?:{_SECRET_NAMES}|secret)[\w.-]{{0,64}})(?:\s[^>]*)?>)([^<]*)"
    rf"(</(?:[\w.-]+:)?\2\s*>)", re.IGNORECASE)
_SECRET_QUOTED = re.compile(rf"""({_SECRET_NAMES}{_KEY_REST}["']?\s*[:=]\s*)(["'])((?:(?!\2)[^\\]|\\.)*)\2""",
                            re.IGNORECASE)
_SECRET_BARE = re.compile(rf"""({_SECRET_NAMES}{_KEY_REST}\s*[:=]\s*)(?!["'\s<])([^&\s"'<>;,]+)""", re.IGNORECASE)
# Without one of these in a text (lower-cased) none of the three rules above can match: each name
# holds one, and the long s ("ſ") is the one letter their IGNORECASE reads as another ("s") that
# lower() leaves as it is and that no other word here holds.
_SECRET_WORDS = ("passw", "pwd", "secret", "token", "\u017f")
# Words that must be in a text for any built-in rule to match (checked in lower case first: cheap).
# More send a text to the rules: "&#" (a character reference can spell a name the rules look
# for: pa&#115;sword, see _builtin), and the letters the rules' IGNORECASE reads as ASCII ones
# that lower() does not make those: "ſ" (the long s, kept as it is), "ı" (the dotless i, kept)
# and U+0307, which lower() puts after the "i" it makes of "İ" ("Basİc" is "basi\u0307c"). The
# Kelvin sign, the only other such letter, lower() makes a "k" (tests/test_review_fast_paths_2.py).
# "%" too: a percent escape can spell a name in a URL or a form body (pass%77ord=, see _builtin).
_TRIGGERS = ("bearer", "eyj", "basic", "ntlm", "negotiate", "kerberos", "tlrmtvnt", "pass", "pwd", "secret",
             "token", "cookie", "authori", "authenticat", "canary", "&#", "%", "\u017f", "\u0131", "\u0307")
# _triggered_by_pieces cuts texts at these characters and joins pieces with "\0": no trigger word may hold one.
assert not any(c in word for word in _TRIGGERS for c in '{"\0')


def _auth_value(value: str) -> str:
    parts = value.strip().split(None, 1)
    if not parts:
        return value
    scheme = parts[0]
    if len(parts) == 1:
        # A bare challenge ("NTLM", "Negotiate") carries no secret.
        return scheme if scheme.isalpha() else REDACTED
    if scheme.lower() in ("basic", "ntlm", "negotiate", "bearer", "digest", "kerberos"):
        return f"{scheme} {REDACTED}"
    return REDACTED


def _cookie_value(name: str, value: str) -> str:
    if name == "set-cookie":
        first, _, attributes = value.partition(";")
        cookie_name = first.split("=", 1)[0].strip()
        return f"{cookie_name}={REDACTED}" + (f";{attributes}" if attributes else "")
    cookies = []
    for part in value.split(";"):
        if not part.strip():
            continue
        cookie_name = part.split("=", 1)[0].strip()
        cookies.append(f"{cookie_name}={REDACTED}")
    return "; ".join(cookies)


def _basic(match: re.Match) -> str:
    try:
        decoded = base64.b64decode(match.group(2) + "=" * (-len(match.group(2)) % 4), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    # Credentials are "user:password"; a word after "Basic" in prose does not decode to that.
    return f"{match.group(1)} {REDACTED}" if b":" in decoded else match.group(0)


@dataclass(frozen=True)
class Redactor:
    """The redaction rules of one log: built-in (unless keep_secrets) plus the user's own."""

    builtin: bool = True
    headers: frozenset[str] = frozenset()  # the user's header names, lower case
    patterns: tuple[re.Pattern, ...] = ()
    _header_line: re.Pattern | None = field(default=None, compare=False, repr=False)
    # A header list's redacted JSON, by the list's pairs and the encoder (Redactor.row): a
    # function of the two, and the same few lists come with most exchanges.
    _header_json: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = (SENSITIVE_HEADERS if self.builtin else frozenset()) | self.headers
        line = None
        if names:
            alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
            # "Name: value" up to the end of its line (or markup), also inside a sentence (an error message).
            line = re.compile(rf'(?im)(?<![\w-])()({alternatives})([ \t]*:[ \t]*)([^\r\n<>"]*)')
        object.__setattr__(self, "_header_line", line)
        object.__setattr__(self, "_header_json", {})

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_header_json"] = None  # a cache: not sent to the writer process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_header_json"] = {}

    @classmethod
    def from_options(cls, keep_secrets: bool = False, headers: Iterable[str] = (),
                     patterns: Iterable[str] = ()) -> Redactor:
        """Rules from the command line / ``ucs_*`` options. A bad regex raises ValueError saying which."""
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as e:
                raise ValueError(f"bad --redact-pattern {pattern!r}: {e}") from e
            if compiled[-1].search(""):
                raise ValueError(f"bad --redact-pattern {pattern!r}: it matches an empty text")
        names = frozenset(h.strip().lower() for h in headers if h.strip())
        return cls(builtin=not keep_secrets, headers=names, patterns=tuple(compiled))

    @property
    def trigger_only(self) -> bool:
        """Whether a text without a word :func:`has_trigger_word` looks for is always left as
        it is (no header names or patterns of the user's own)."""
        return not self.headers and not self.patterns

    @property
    def active(self) -> bool:
        return self.builtin or bool(self.headers) or bool(self.patterns)

    # -- one value ----------------------------------------------------------------

    def header(self, name: str, value: str) -> str:
        lower = name.lower()
        if lower in self.headers:
            return REDACTED
        if self.builtin:
            if lower in AUTH_HEADERS:
                value = _auth_value(value)
            elif lower in COOKIE_HEADERS:
                value = _cookie_value(lower, value)
            elif lower in SECRET_HEADERS or _SECRET_KEY.search(lower):
                return REDACTED  # X-User-Password too: a header's name is a key
            else:
                value = _sub(value, _BEARER)
        return self.text(value)

    def headers_of(self, pairs: Iterable[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        if pairs is None:
            return None
        return [(k, self.header(k, v)) for k, v in pairs]

    def text(self, text: str) -> str:
        """Every credential a text may carry (bodies, decoded strings, error messages, paths)."""
        if not text:
            return text
        if self.builtin or self.headers:
            # One look for the trigger words (the costly part on a big body): redacting header
            # lines only removes values, so it never makes a text need the built-in rules
            # that did not need them before.
            lower = text.lower()
            triggered = self.builtin and _triggered(lower)
            if self._header_line is not None and ":" in text and (
                    triggered or any(n in lower for n in self.headers)):
                text = self._header_line.sub(self._header_line_value, text)
            if triggered:
                text = _builtin(text)
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text

    def _header_line_value(self, match: re.Match) -> str:
        indent, name, sep, value = match.groups()
        lower = name.lower()
        if lower in self.headers or lower in SECRET_HEADERS:
            value = REDACTED
        elif lower in AUTH_HEADERS:
            value = _auth_value(value)
        elif lower in COOKIE_HEADERS and "=" in value:  # cookies are name=value ("Cookie: chocolate" is not)
            value = _cookie_value(lower, value)
        return f"{indent}{name}{sep}{value}"

    def json_text(self, text: str | None, encode: Callable[[Any], str]) -> str | None:
        """A JSON column: every string in it redacted, the JSON kept valid (and untouched when
        no rule could match)."""
        if not text or not self._may_match(text):
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        return encode(self.value(value))

    def _may_match(self, text: str) -> bool:
        if self.patterns:
            return True  # a pattern may match a string only in its unescaped form: look at each
        lower = text.lower()
        return (self.builtin and _triggered(lower)) or any(n in lower for n in self.headers)

    def value(self, value: Any, key: str | None = None) -> Any:
        """A decoded JSON value with every string redacted; a string under a header's name
        (an ``http-status`` fault's ``headers``) is redacted as that header."""
        if isinstance(value, str):
            if key is not None and self._is_header(key):
                return self.header(key, value)
            if key is not None and self.builtin and _SECRET_KEY.search(key):
                return REDACTED  # newPassword too
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str) \
                    and self._is_header(value[0]):
                return [value[0], self.header(value[0], value[1])]  # a [name, value] header pair
            return [self.value(v) for v in value]
        return value

    def _is_header(self, name: str) -> bool:
        lower = name.lower()
        return lower in self.headers or (self.builtin and (lower in SENSITIVE_HEADERS
                                                           or _SECRET_KEY.search(lower) is not None))

    # -- a whole row ----------------------------------------------------------------

    def row(self, row: dict[str, Any], json_columns: Iterable[str], encode: Callable[[Any], str],
            done: Iterable[str] = ()) -> dict[str, Any]:
        """Every value of a log row, redacted, in place: the one place a row passes before it is
        stored. A list (header pairs) is redacted as headers and encoded as JSON; a JSON column's
        text has its strings redacted; any other text as text. ``done``: columns whose values
        passed :meth:`text` (a JSON column: :meth:`json_text`) of these rules already (the
        bodies of ucsproxy.logrow's memo), left as they are."""
        if type(json_columns) is not frozenset:
            json_columns = frozenset(json_columns)
        if type(done) is not frozenset:
            done = frozenset(done)
        active = self.active
        short: list[str] = []  # the short texts (JSON ones included) and their columns
        short_names: list[str] = []
        others: list[str] = []  # the long texts' columns
        for name, value in row.items():
            kind = type(value)
            if kind is list:
                row[name] = self._header_list(value, encode, active)
            elif (kind is str or (value is not None and isinstance(value, str))) and active and name not in done:
                if len(value) < _SHORT:
                    short.append(value)
                    short_names.append(name)
                else:
                    others.append(name)
        if short:
            # The short values are looked at together, once: in the usual row no rule can match
            # them, and then they are stored as they are. Each value's outcome is what redacting
            # it alone gives, whichever way it takes: a value (a JSON text too) without a trigger
            # word is kept as it is by text() and json_text() alike.
            if self.patterns or self._may_match("\n".join(short)):
                others.extend(short_names)
        for name in others:
            value = row[name]
            row[name] = self.json_text(value, encode) if name in json_columns else self.text(value)
        return row

    def _header_list(self, pairs: list, encode: Callable[[Any], str], active: bool) -> str:
        """A header list's column: its pairs redacted as headers (each value as redacting it
        alone gives), encoded."""
        if not active:
            return encode([list(p) for p in pairs])
        cache = self._header_json
        key: tuple | None
        try:
            key = (encode, tuple(pairs))
            found = cache.get(key) if cache is not None else None
        except TypeError:  # pairs that are lists (an import): not kept
            key = found = None
        if found is not None:
            return found
        # Credential headers (known by name) are redacted one by one in any case; the others
        # are looked at together, and kept as they are when no rule can match any of them.
        if not self.patterns and not self._may_match("\n".join(f"{k}: {v}" for k, v in pairs if not self._is_header(k))):
            text = encode([[k, self.header(k, v)] if self._is_header(k) else [k, v] for k, v in pairs])
        else:
            text = encode([list(p) for p in self.headers_of(pairs) or ()])
        if key is not None and cache is not None and len(text) <= 8192:  # (not a 60 KB list: logrow.HEADERS_KEPT)
            keep(cache, key, text, 4096)
        return text


#: Values shorter than this are looked at together by Redactor.row.
_SHORT = 2048


def _triggered(lower: str) -> bool:
    """Whether a lower-cased text holds a word any built-in rule needs."""
    if len(lower) >= _PIECES_MIN:
        return _triggered_by_pieces(lower)
    return _has_trigger(lower)


def has_trigger_word(text: str) -> bool:
    """Whether ``text`` holds a word some built-in rule needs. Without one, a text passes
    :meth:`Redactor.text` (and a JSON text :meth:`Redactor.json_text`) unchanged under any
    rules whose :attr:`Redactor.trigger_only` is true."""
    return _has_trigger(text.lower())


def _has_trigger(lower: str) -> bool:
    for word in _TRIGGERS:
        if word in lower:
            return True
    return False


#: Texts this long are looked at piece by piece (:func:`_triggered_by_pieces`).
_PIECES_MIN = 32 * 1024
class _CleanPieces:
    """Pieces of text known to hold no trigger word, at most ``most`` of them and ``chars``
    characters of them in all (then forgotten all at once)."""

    def __init__(self, most: int, chars: int) -> None:
        self.most, self.chars = most, chars
        self.pieces: set[str] = set()
        self.size = 0  # characters of the pieces kept

    def triggered(self, pieces: set[str], lower: bool) -> bool:
        """Whether a piece of ``pieces`` not known clean holds a trigger word (``lower``: the
        pieces are not lower-cased yet). The pieces not known are looked at together, joined by a
        character no trigger word holds; found clean, they are kept."""
        new = pieces - self.pieces if self.pieces else pieces
        if not new:
            return False
        joined = "\0".join(new)
        if _has_trigger(joined.lower() if lower else joined):
            return True
        if len(self.pieces) + len(new) > self.most or self.size + len(joined) > self.chars:
            self.clear()
        self.pieces.update(new)
        self.size += len(joined)
        return False

    def clear(self) -> None:
        self.pieces.clear()
        self.size = 0


#: Pieces of big texts known clean (:func:`_triggered_by_pieces`): big texts without a '"' or
#: '{' are one piece each.
_CLEAN_PIECES = _CleanPieces(200_000, 32 * 1024 * 1024)


def _triggered_by_pieces(lower: str) -> bool:
    """:func:`_has_trigger` of a big text, looking only at the pieces not seen lately.

    A big body or its JSON is mostly what an earlier one held (a list that grew by a contact):
    the text is cut at every ``{`` (JSON) or ``"`` (XML, where attribute values come every few
    elements, and anything else), characters no trigger word holds, so a word found in the
    text is whole inside one piece. Pieces met before
    in a text without trigger words hold none; the others are looked at together (joined by a
    character no trigger word holds either), which gives the same answer as looking at the whole."""
    pieces = set(lower.split("{" if lower.lstrip()[:1] in ("{", "[") else '"'))
    return _CLEAN_PIECES.triggered(pieces, lower=False)


#: Pieces of short texts known clean (:func:`texts_clean`).
_KNOWN_CLEAN = _CleanPieces(100_000, 8 * 1024 * 1024)


def texts_clean(texts: list[str]) -> bool:
    """Whether no text of ``texts`` holds a word a built-in rule needs (:func:`has_trigger_word`
    of each is False), looking only at the pieces not seen lately: the log writer's many small
    texts of one kind (a mock's answers, their JSON) differ from the ones before only in names,
    ids and times. Each text is cut at every ``"`` (a character no trigger word holds: XML's
    attribute values and JSON's strings come apart from the markup around them); pieces met
    before in texts without trigger words hold none, and the others are looked at together,
    joined by a character no trigger word holds either (lower-cased: a character's lower case
    does not depend on its neighbours but for a final sigma, which no trigger word holds).
    The same answer as looking at each text whole."""
    return not _KNOWN_CLEAN.triggered(set('"'.join(texts).split('"')), lower=True)


#: Characters kept on each side of a changed stretch (:class:`KnownStretches`): more than any
#: trigger word has, so a word that reaches into the change stands whole inside the part kept.
_MARGIN = max(map(len, _TRIGGERS))


def _shared(a: str, b: str) -> tuple[int, int]:
    """The lengths of a start and of an end ``a`` and ``b`` share (not overlapping), each found to
    within 8 characters (shorter than the longest: never longer)."""
    n, m = len(a), len(b)
    low, high = 0, min(n, m)
    while high - low > 8:
        mid = (low + high) >> 1
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid
    start = low
    low, high = 0, min(n, m) - start
    while high - low > 8:
        mid = (low + high) >> 1
        if a[n - mid:n - low] == b[m - mid:m - low]:
            low = mid
        else:
            high = mid
    return start, low


class KnownStretches:
    """Per kind of text (the log writer's: an operation's request bodies, its answers), a start and
    an end known to hold no trigger word, and the newest text of the kind found clean (texts up
    to ``max_text`` characters, ``kinds`` kinds at most: then forgotten all at once; at most
    3 x 64 x 16 K characters by default).

    A text of the kind that begins with that start and ends with that end can hold a trigger
    word only where it reaches into the stretch between them: :meth:`part` is that stretch with
    _MARGIN characters more on each side (a word within the start would be in the clean text the
    start was cut from, a character's lower case not depending on its neighbours but for a final
    sigma, which no trigger word holds). So :func:`texts_clean` of the parts answers what it
    answers of the texts. The start and the end are what the newest two clean texts of a kind
    share (:meth:`learn`, when a clean text does not fit the ones known)."""

    def __init__(self, kinds: int = 64, max_text: int = 16 * 1024):
        self.kinds = kinds
        self.max_text = max_text
        self._known: dict[Any, tuple[str, str, str]] = {}  # kind -> (start, end, newest clean text)

    def part(self, kind: Any, text: str) -> str:
        """What of ``text`` :func:`texts_clean` must look at ("" when it is the newest clean one)."""
        known = self._known.get(kind)
        if known is None or len(text) > self.max_text:
            return text
        start, end, last = known
        if text == last:
            return ""
        if len(text) >= len(start) + len(end) and text.startswith(start) and text.endswith(end):
            return text[max(0, len(start) - _MARGIN):len(text) - len(end) + _MARGIN]
        return text

    def learn(self, kind: Any, text: str) -> None:
        """``text``, of ``kind``, was found clean."""
        if len(text) > self.max_text:
            return
        known = self._known.get(kind)
        if known is not None:
            start, end, last = known
            if (start or end) and len(text) >= len(start) + len(end) and text.startswith(start) \
                    and text.endswith(end):
                self._known[kind] = (start, end, text)
                return
            shared_start, shared_end = _shared(text, last)
            # Cut at a delimiter of the markup (an attribute value's or a JSON string's quote, a
            # tag's end or start): what stands between two is one value, so the next text of the
            # kind, with another value there, still fits.
            shared_start = max(text.rfind('"', 0, shared_start), text.rfind(">", 0, shared_start)) + 1
            at = len(text) - shared_end
            cut = [i for i in (text.find('"', at), text.find("<", at)) if i >= 0]
            shared_end = len(text) - min(cut) if cut else 0
            self._known[kind] = (text[:shared_start], text[len(text) - shared_end:] if shared_end else "", text)
            return
        if len(self._known) >= self.kinds:
            self._known.clear()
        self._known[kind] = ("", "", text)


def _sub(text: str, bearer: re.Pattern) -> str:
    # Auth scheme names are case-insensitive ("BeArEr" too); lower() is cheaper than a regex scan.
    if "eyJ" not in text and "bearer" not in text.lower():
        return text
    text = bearer.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


def _builtin(text: str) -> str:
    """The built-in rules over ``text``. Where character references hide what a rule looks for
    (``pa&#115;sword=...`` is ``password=...`` to an XML reader), the text is redacted with the
    references to plain characters written as those characters (the same XML), as long as
    that finds something the text as it stands does not. Percent escapes of letters, digits and
    ``-._~`` (``pass%77ord=...``, RFC 3986's unreserved characters: the same URL or form body
    written either way) are read alike."""
    redacted = _builtin_plain(text)
    plain = _PLAIN_REF.sub(_plain_ref, text) if "&#" in text else text
    if "%" in plain:  # the same for percent escapes of unreserved characters (the same URL)
        plain = _PLAIN_PERCENT.sub(_plain_percent, plain)
    if plain != text:
        found = _builtin_plain(plain)
        if found != plain and found.count(REDACTED) > redacted.count(REDACTED):
            return found
    return redacted


# A decimal or hexadecimal character reference.
_PLAIN_REF = re.compile(r"&#(?:[0-9]{1,7}|x[0-9A-Fa-f]{1,6});")
# What a reference may be replaced by: characters the same in an XML text or attribute value
# whether written or referenced (not whitespace: an attribute value's literal tab is a space).
_PLAIN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:=")


def _plain_ref(match: re.Match) -> str:
    ref = match.group()
    code = int(ref[3:-1], 16) if ref[2] == "x" else int(ref[2:-1])
    char = chr(code) if code < 128 else ""
    return char if char in _PLAIN_CHARS and char else ref


# A percent escape, and what it may be replaced by: unreserved characters only (an escaped "=" or
# "&" is data, not the query's own punctuation).
_PLAIN_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _plain_percent(match: re.Match) -> str:
    char = chr(int(match.group()[1:], 16))
    return char if char in _UNRESERVED else match.group()


def _builtin_plain(text: str) -> str:
    text = _sub(text, _BEARER_IN_TEXT)
    text = _BASIC.sub(_basic, text)
    text = _NTLM.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _NTLM_BARE.sub(REDACTED, text)
    lower = text.lower()
    if any(word in lower for word in _SECRET_WORDS):
        text = _SECRET_ELEMENT.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(4)}", text)
        text = _SECRET_QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
        text = _SECRET_BARE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return text


DEFAULT = Redactor()
KEEP_SECRETS = Redactor(builtin=False)


def redact_header(name: str, value: str) -> str:
    return DEFAULT.header(name, value)


def redact_headers(headers: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    return DEFAULT.headers_of(headers)


def redact_text(text: str) -> str:
    """Every built-in rule on one text (bodies)."""
    return DEFAULT.text(text)
