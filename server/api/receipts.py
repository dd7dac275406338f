"""Receipts of an order: the stored JSON documents, and a printable HTML page of one.

The JSON is the stored text itself, byte for byte (a receipt never changes after issue); the
page is rendered from it, every piece of text HTML-escaped, with its CSS inline so it prints
and opens as a blob without fetching anything.
"""

from __future__ import annotations

import html
import re
from typing import Any

import orjson
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from orders import receipts
from orders.models import Order
from orders.writes import ORDER_ID, visible_to
from server.api import schemas
from server.api.common import principal
from server.api.contract import operation
from server.auth import Principal
from server.errors import NotFound
from server.services import services

RECEIPT_PATH = {"order_id": schemas.OrderId, "number": schemas.ReceiptNumber}
_ORDER_PATH = {"order_id": schemas.OrderId}
_HTML = "text/html"
_HTML_HEADERS = {
    # Nothing on the page runs or loads: inline styles are all it needs.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-cache",
}
_JSON_HEADERS = {"Cache-Control": "private, no-cache"}
#: A receipt number in a path: digits only, short enough that int() is cheap.
_NUMBER = re.compile(r"[0-9]{1,20}")


async def _visible_order_id(request: Request, caller: Principal) -> str:
    order_id: str = request.path_params["order_id"]
    if not ORDER_ID.fullmatch(order_id):
        raise NotFound("no such order")
    async with services(request).db.read() as session:
        order = (await session.execute(select(Order).where(Order.id == order_id))).scalar()
    # Someone else's order is indistinguishable from no order at all.
    if order is None or not visible_to(order, caller):
        raise NotFound("no such order")
    return order_id


async def _one(request: Request) -> receipts.Stored:
    caller = principal(request)
    order_id = await _visible_order_id(request, caller)
    raw: str = request.path_params["number"]
    number = int(raw) if _NUMBER.fullmatch(raw) else 0
    found = None
    if 1 <= number <= schemas.MAX_SEQ:
        async with services(request).db.read() as session:
            found = await receipts.receipt_of(session, order_id, number)
    if found is None:
        raise NotFound("no such receipt of this order")
    return found


@operation(
    "The order's receipts, oldest first (owner, its store, admin)",
    tag="orders",
    path=_ORDER_PATH,
    responses={
        200: ("Every receipt issued for the order, as issued", schemas.ReceiptList),
        404: "No such order (or not yours)",
    },
)
async def list_receipts(request: Request) -> Response:
    """The order's receipts, oldest first, each exactly as it was stored at issue."""
    caller = principal(request)
    order_id = await _visible_order_id(request, caller)
    async with services(request).db.read() as session:
        stored = await receipts.receipts_of(session, order_id)
    body = b'{"receipts":[' + b",".join(s.document.encode() for s in stored) + b"]}"
    return Response(body, media_type="application/json", headers=_JSON_HEADERS)


@operation(
    "One receipt of the order as issued; with Accept: text/html, its printable page",
    tag="orders",
    path=RECEIPT_PATH,
    responses={
        200: ("The receipt (text/html when asked for first in Accept)", schemas.Receipt),
        404: "No such order (or not yours), or no such receipt of it",
    },
)
async def get_receipt(request: Request) -> Response:
    """One receipt as stored, or its printable page when the caller asks for HTML first."""
    found = await _one(request)
    if _wants_html(request.headers.get("accept", "")):
        return _page(found)
    return Response(found.document, media_type="application/json", headers=_JSON_HEADERS)


@operation(
    "The printable page of one receipt of the order",
    tag="orders",
    path=RECEIPT_PATH,
    responses={
        200: ("A self-contained HTML page (inline CSS, print styles)", _HTML),
        404: "No such order (or not yours), or no such receipt of it",
    },
)
async def get_receipt_html(request: Request) -> Response:
    """The printable page of one receipt."""
    return _page(await _one(request))


def _wants_html(accept: str) -> bool:
    """Whether ``accept`` names text/html before (or without) application/json."""
    kinds = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if _HTML not in kinds:
        return False
    return "application/json" not in kinds or kinds.index(_HTML) < kinds.index("application/json")


def _page(found: receipts.Stored) -> Response:
    return Response(
        render_html(orjson.loads(found.document)),
        media_type=_HTML,
        headers=_HTML_HEADERS,
    )


# ISO 4217 currencies whose minor unit is not a hundredth.
_EXPONENT = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
}


def money_text(amount: int, currency: str) -> str:
    """``amount`` minor units of ``currency`` as a person reads it: ``1,234.50 INR``."""
    exponent = _EXPONENT.get(currency, 2)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    text = f"{sign}{major:,}"
    if exponent:
        text += f".{minor:0{exponent}d}"
    return f"{text} {currency}"


def _rate_text(rate_bp: int) -> str:
    whole, rest = divmod(rate_bp, 100)
    return f"{whole}%" if rest == 0 else f"{whole}.{rest:02d}".rstrip("0") + "%"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111;
background:#f4f4f4;margin:0;padding:24px}
main{max-width:640px;margin:0 auto;background:#fff;padding:28px 32px;border-radius:6px;
box-shadow:0 1px 3px rgba(0,0,0,.15)}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:22px 0 6px}
.meta{color:#555;margin:0 0 16px}.meta dt{float:left;clear:left;width:9em;color:#777}
.meta dd{margin:0 0 2px 9em;word-break:break-all}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:4px 6px;
border-bottom:1px solid #e3e3e3;vertical-align:top}th{font-weight:600;color:#444}
td.n,th.n{text-align:right;white-space:nowrap}
tfoot td{border-bottom:0}tfoot tr.total td{font-weight:700;border-top:2px solid #111}
.kind{display:inline-block;padding:1px 8px;border-radius:10px;background:#e8f1ff;
color:#0b4fb3;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kind.refund{background:#fff0e6;color:#a04100}
.foot{color:#777;font-size:12px;margin-top:22px}
@media print{body{background:#fff;padding:0}main{box-shadow:none;border-radius:0;
max-width:none;padding:0}.kind{border:1px solid currentColor}a{color:inherit}}
"""


def render_html(doc: dict[str, Any]) -> str:
    """The printable page of a receipt document (every piece of text escaped)."""
    currency = str(doc["currency"])

    def m(amount: Any) -> str:
        return _e(money_text(int(amount), currency))

    kind = str(doc["kind"])
    title = ("Receipt" if kind == receipts.SALE else "Refund receipt") + f" {doc['label']}"
    lines = "".join(
        f"<tr><td>{_e(line['name'])}<br><small>{_e(line['sku'])}</small></td>"
        f'<td class="n">{_e(line["quantity"])}</td><td class="n">{m(line["unit_price"])}</td>'
        f'<td class="n">{m(line["amount"])}</td></tr>'
        for line in doc["lines"]
    )
    tax = doc.get("tax")
    foot = (
        '<tr class="total"><td colspan="3">Order total</td>'
        f'<td class="n">{m(doc["order_amount"])}</td></tr>'
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f'<h1>{_e(title)} <span class="kind {_e(kind)}">{_e(kind)}</span></h1>',
        '<dl class="meta">',
        f"<dt>Receipt no.</dt><dd>{_e(doc['label'])}</dd>",
        f"<dt>Issued</dt><dd>{_e(doc['issued_at'])}</dd>",
        f"<dt>Store</dt><dd>{_e(doc['store_id'])}</dd>",
        f"<dt>Order</dt><dd>{_e(doc['order_id'])}</dd>",
        f"<dt>Customer</dt><dd>{_e(doc['customer_id'] or 'walk-in')}</dd>",
        "</dl>",
        '<h2>Items</h2><table><thead><tr><th>Item</th><th class="n">Qty</th>'
        '<th class="n">Unit price</th><th class="n">Amount</th></tr></thead>',
        f"<tbody>{lines}</tbody><tfoot>{foot}</tfoot></table>",
    ]
    refund = doc.get("refund")
    if refund is not None:
        parts += [
            "<h2>This refund</h2><table><tbody>",
            f'<tr><td>Amount refunded</td><td class="n">{m(refund["amount"])}</td></tr>',
            f"<tr><td>Reason</td><td>{_e(refund['reason'])}</td></tr>",
            f"<tr><td>Reference</td><td>{_e(refund['reference'] or refund['id'])}</td></tr>",
            f"<tr><td>At</td><td>{_e(refund['at'])}</td></tr>",
            "</tbody></table>",
        ]
    if tax is not None:
        what = "order total" if refund is None else "amount refunded"
        parts += [
            "<h2>Tax</h2><table><tbody>",
            f'<tr><td>Net of tax ({_e(what)})</td><td class="n">{m(tax["net"])}</td></tr>',
            f"<tr><td>Tax {_e(_rate_text(int(tax['rate_bp'])))}, included</td>"
            f'<td class="n">{m(tax["amount"])}</td></tr>',
            "</tbody></table>",
        ]
    payments = "".join(
        f"<tr><td>{_e(p['at'])}</td><td>{_e(p['gateway'])}"
        f"{' · ' + _e(p['method']) if p['method'] else ''}</td><td>{_e(p['reference'])}</td>"
        f'<td class="n">{m(p["amount"])}</td></tr>'
        for p in doc["payments"]
    )
    parts.append(
        "<h2>Payments</h2><table><thead><tr><th>At</th><th>How</th><th>Reference</th>"
        f'<th class="n">Amount</th></tr></thead><tbody>{payments or _none(4)}</tbody></table>'
    )
    refunds = "".join(
        f"<tr><td>{_e(r['at'])}</td><td>{_e(r['reason'])}</td>"
        f"<td>{_e(r['reference'] or r['id'])}</td>"
        f'<td class="n">{m(r["amount"])}</td></tr>'
        for r in doc["refunds"]
    )
    if refunds:
        parts.append(
            "<h2>Refunds</h2><table><thead><tr><th>At</th><th>Reason</th><th>Reference</th>"
            f'<th class="n">Amount</th></tr></thead><tbody>{refunds}</tbody></table>'
        )
    totals = doc["totals"]
    parts += [
        "<h2>Totals</h2><table><tbody>",
        f'<tr><td>Paid</td><td class="n">{m(totals["paid"])}</td></tr>',
        f'<tr><td>Refunded</td><td class="n">{m(totals["refunded"])}</td></tr>',
        f'<tr><td>Outstanding</td><td class="n">{m(totals["outstanding"])}</td></tr>',
        "</tbody></table>",
        '<p class="foot">This receipt is kept as issued and never changes; a later refund '
        "has a receipt of its own.</p>",
        "</main></body></html>",
    ]
    return "".join(parts)


def _none(columns: int) -> str:
    return f'<tr><td colspan="{columns}">none</td></tr>'
