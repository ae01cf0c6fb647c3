"""Parsing XML nobody vouches for: one parser configuration and one DTD check for every module.

Entities are never resolved, DTDs never loaded, the network never touched, and trees stay
within libxml2's default limits (no ``huge_tree``). A document that declares a DTD or an
entity is refused before parsing (:func:`declares_dtd`, :func:`declares_dtd_text`) and,
should one get through, after it (:func:`has_dtd`).
"""

from __future__ import annotations

import threading

from lxml import etree

#: How a DTD or an entity declaration starts, in UTF-8 and in both UTF-16 byte orders.
DTD_MARKERS: tuple[bytes, ...] = (
    b"<!DOCTYPE", b"<!doctype", "<!DOCTYPE".encode("utf-16-le"), "<!DOCTYPE".encode("utf-16-be"),
    b"<!ENTITY", "<!ENTITY".encode("utf-16-le"), "<!ENTITY".encode("utf-16-be"),
)
_TEXT_MARKERS = ("<!DOCTYPE", "<!doctype", "<!ENTITY")


def parser(encoding: str | None = None, remove_blank_text: bool = False) -> etree.XMLParser:
    """A new safe parser; ``encoding`` overrides what the document declares."""
    return etree.XMLParser(
        encoding=encoding, resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_blank_text=remove_blank_text,
    )


_PARSERS = threading.local()


def thread_parser() -> etree.XMLParser:
    """This thread's safe parser for documents read in their own declared encoding. lxml
    parsers can be reused, one parse at a time: this saves a parser context per document."""
    found: etree.XMLParser | None = getattr(_PARSERS, "parser", None)
    if found is None:
        found = _PARSERS.parser = parser()
    return found


def declares_dtd(body: bytes) -> bool:
    """True when the bytes hold a DTD or an entity declaration (UTF-8 or UTF-16)."""
    # Every marker holds a "!": one memchr clears the usual document of all seven.
    return b"!" in body and any(marker in body for marker in DTD_MARKERS)


def declares_dtd_text(text: str) -> bool:
    """True when the text holds a DTD or an entity declaration."""
    return any(marker in text for marker in _TEXT_MARKERS)


def has_dtd(root: etree._Element) -> bool:
    """True when a parsed document carries a doctype or an internal DTD."""
    docinfo = root.getroottree().docinfo
    return bool(docinfo.doctype) or docinfo.internalDTD is not None


def fromstring(data: bytes, remove_blank_text: bool = False) -> etree._Element | None:
    """``data`` parsed safely, or None when it declares a DTD or is not well-formed XML."""
    if declares_dtd(data):
        return None
    try:
        root = etree.fromstring(data, parser(remove_blank_text=remove_blank_text))
    except Exception:  # lxml raises XMLSyntaxError, and ValueError for some encodings
        return None
    return None if root is None or has_dtd(root) else root
