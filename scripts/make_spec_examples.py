#!/usr/bin/env python3
"""Regenerate recordings/spec-examples/ from the examples of the protocol documents.

    .venv/bin/python scripts/make_spec_examples.py [--spec ../shared/spec] [--out recordings/spec-examples]

Every request/response example of MS-OXWSCOS section 4 and of the operation
pages becomes one exchange, in document order, with ``http://`` namespaces as
the real service sends them. Examples that show an answer without its request
(the AddImGroup schema-validation fault, the GetImItemList version fault) get
the request the page describes.

One repair, so that a replay of the recording serves only what Exchange's schema allows:
the GetImItemList page prints each Persona's ``EmailAddresses`` list with
``<EmailAddress>`` items, where the schema (ArrayOfEmailAddressesType) has ``<Address>``;
the recording holds ``<Address>`` (see recordings/spec-examples/README.md). The page's
text stays verbatim in tests/fixtures/.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ucsproxy.logrow import RawExchange, build_row  # noqa: E402
from ucsproxy.recordingfiles import export_rows  # noqa: E402

EPOCH = 1352246400.0  # 2012-11-07T00:00:00Z, the GetImItems page's CreationTime day


def envelopes(text: str) -> list[str]:
    """The SOAP envelopes of a document, in order, each with its XML declaration when it has one."""
    out, i = [], 0
    while True:
        found = [(p, tag) for tag in ("soap", "s") if (p := text.find(f"<{tag}:Envelope", i)) != -1]
        if not found:
            return out
        start, prefix = min(found)
        decl = text.rfind("<?xml", i, start)
        if decl != -1 and not text[text.index("?>", decl) + 2:start].strip():
            start = decl
        end = text.index(f"</{prefix}:Envelope>", start) + len(f"</{prefix}:Envelope>")
        out.append(text[start:end])
        i = end


def schema_valid_email_addresses(xml: str) -> str:
    """``EmailAddresses/EmailAddress`` items as the schema names them: ``EmailAddresses/Address``."""
    xml = re.sub(r"<EmailAddresses>(\s*)<EmailAddress>", r"<EmailAddresses>\1<Address>", xml)
    return re.sub(r"</EmailAddress>(\s*)</EmailAddresses>", r"</Address>\1</EmailAddresses>", xml)


def http_namespaces(xml: str) -> str:
    return xml.replace("https://schemas.microsoft.com/", "http://schemas.microsoft.com/")


def section4(spec: Path) -> list[str]:
    text = (spec / "MS-OXWSCOS.txt").read_text()
    body = text[text.rindex("\n4 Protocol Examples"):text.rindex("\n5 Security")]  # past the contents table
    # The AddImGroup response is split by a page break: drop the break's fences and blank lines.
    body = body.replace("      </ImGroup>\n```\n\n\n\n```\n\n    </AddImGroupResponse>",
                        "      </ImGroup>\n    </AddImGroupResponse>")
    return envelopes(body)


def exchanges(spec: Path) -> list[tuple[str, str, str, int]]:
    """(source, request, response, status) in document order."""
    out = []
    s4 = section4(spec)
    for n, (req, resp) in enumerate(zip(s4[0::2], s4[1::2])):
        out.append((f"MS-OXWSCOS section 4, example {n + 1}", req, resp, 200))
    page = envelopes((spec / "AddImGroup-operation.txt").read_text())
    out.append(("AddImGroup operation page", page[0], page[1], 200))
    bad_request = page[0].replace("MyCustomGroup", "~!@#$%^&")
    out.append(("AddImGroup operation page (error)", bad_request, page[2], 500))
    page = envelopes((spec / "AddImContactToGroup-operation.txt").read_text())
    out.append(("AddImContactToGroup operation page", page[0], page[1], 200))
    out.append(("AddImContactToGroup operation page (error)", page[0], page[2], 200))
    page = envelopes((spec / "GetImItemList-operation.md").read_text())
    out.append(("GetImItemList operation page", page[0], schema_valid_email_addresses(page[1]), 200))
    old_version = page[0].replace('Version="Exchange2013"', 'Version="Exchange2010_SP2"')
    out.append(("GetImItemList operation page (error)", old_version, page[2], 500))
    page = envelopes((spec / "GetImItems-operation.txt").read_text())
    out.append(("GetImItems operation page", page[0], page[1], 200))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT.parent / "shared" / "spec")
    ap.add_argument("--out", type=Path, default=ROOT / "recordings" / "spec-examples")
    args = ap.parse_args()
    rows = []
    for n, (source, request, response, status) in enumerate(exchanges(args.spec)):
        request, response = http_namespaces(request), http_namespaces(response)
        operation = request.split(":Body", 1)[1].split("<m:", 1)[1].split(">", 1)[0].split()[0].rstrip("/")
        raw = RawExchange(
            mode="record", started_at=EPOCH + n, duration_ms=None, client=None, server=None, method="POST",
            path="/EWS/Exchange.asmx", http_status=status,
            request_headers=[("Content-Type", "text/xml; charset=utf-8"),
                             ("SOAPAction", f'"http://schemas.microsoft.com/exchange/services/2006/messages/{operation}"')],
            request_body=request.encode(), response_headers=[("Content-Type", "text/xml; charset=utf-8")],
            response_body=response.encode(), error=None,
        )
        row = build_row(raw)
        row["error"] = None
        row["client"] = source  # where the example comes from, shown by `ucsproxy log`
        rows.append(row)
    count = export_rows(rows, args.out, source="examples of [MS-OXWSCOS] and the EWS operation pages")
    print(f"wrote {count} exchanges to {args.out}")


if __name__ == "__main__":
    main()
