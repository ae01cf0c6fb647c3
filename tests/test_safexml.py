"""ucsproxy.safexml: the one safe parser and DTD check every module uses."""

from __future__ import annotations

import threading

from lxml import etree

from ucsproxy import codec, safexml

LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><x>&xxe;</x>"""


def test_dtd_declarations_are_seen_in_every_encoding():
    for text in ("<!DOCTYPE x><x/>", "<!ENTITY e 'v'>", "<!doctype x>"):
        assert safexml.declares_dtd_text(text)
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            data = text.encode(encoding)
            if text.startswith("<!doctype") and encoding != "utf-8":
                continue  # lower case only matters in UTF-8, where libxml2 reads it as a doctype
            assert safexml.declares_dtd(data), (text, encoding)
    assert not safexml.declares_dtd(b"<x><!-- no doctype here --></x>")
    assert not safexml.declares_dtd_text("<x>&amp;</x>")


def test_a_document_with_a_dtd_is_refused_before_and_after_parsing():
    assert safexml.fromstring(LAUGHS) is None
    assert safexml.fromstring(EXTERNAL) is None
    # Should a DTD get past the byte check, the parsed tree still shows it, unexpanded.
    root = etree.fromstring(EXTERNAL, safexml.parser())
    assert safexml.has_dtd(root) and b"root:" not in etree.tostring(root)
    assert not safexml.has_dtd(etree.fromstring(b"<x/>", safexml.parser()))


def test_fromstring_reads_plain_xml_and_refuses_the_rest():
    root = safexml.fromstring(b"<a>\n  <b>x</b>\n</a>", remove_blank_text=True)
    assert root is not None and etree.tostring(root) == b"<a><b>x</b></a>"
    assert safexml.fromstring(b"<a><b></a>") is None
    assert safexml.fromstring(b"not xml") is None


def test_each_thread_reuses_its_own_parser():
    mine = safexml.thread_parser()
    assert safexml.thread_parser() is mine
    theirs: list[etree.XMLParser] = []
    worker = threading.Thread(target=lambda: theirs.append(safexml.thread_parser()))
    worker.start()
    worker.join()
    assert theirs and theirs[0] is not mine


def test_the_codec_refuses_what_safexml_refuses():
    assert codec.decode_request(LAUGHS).kind == "forbidden-dtd"
    assert codec.decode_request(EXTERNAL.decode().encode("utf-16")).kind == "forbidden-dtd"
