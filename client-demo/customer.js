// @ts-check
/**
 * The customer page: demo sign-in, place an order, watch it live (its status, and its money:
 * paid / refunded / outstanding and the receipts), browse history.
 * Live state comes from the orderstatus client (WebSocket, resumable, long-poll fallback);
 * history from GET /api/orders with a cursor. Both feed one map of orders, newest version wins.
 */

import { moneyFromNote } from "./money.js";
import { apiRequest, connect, newIdempotencyKey } from "./orderstatus.js";
import { allowedNext, isTerminal, statusLabel, trackerSteps } from "./workflow.js";
import {
  connectionStatusHandler,
  $,
  CURRENCY,
  MENU,
  STORES,
  announce,
  demoTokenSource,
  describeError,
  fill,
  formatDateTime,
  formatMoney,
  formatTime,
  h,
  hideBanner,
  itemsSummary,
  receiptDocument,
  renderConnection,
  shortId,
  showBanner,
  statusPill,
  storeName,
} from "./ui.js";

/** @typedef {import("./orderstatus.js").Order} Order */
/** @typedef {import("./orderstatus.js").StreamEvent} StreamEvent */
/**
 * @typedef {Object} TimelineEntry
 * @property {number} event_id
 * @property {string|null} status
 * @property {string|null} previous_status
 * @property {string} source
 * @property {string|null} at
 * @property {string|null} [note]
 * @property {string} [kind]
 * @property {{amount: number, currency: string, reason?: string|null}|null} [money]  a payment's or refund's amount
 */
/**
 * @typedef {Object} PaymentView
 * @property {string} id
 * @property {string} status
 * @property {string|null} redirect_url
 */
/**
 * A receipt as `GET /api/orders/{id}/receipts` lists it (the printable page is `{number}.html`).
 * @typedef {Object} ReceiptView
 * @property {number} number  per store, no gaps
 * @property {string} [label]  the printed number, e.g. "store-1-000042"
 * @property {string} [kind]  sale | refund
 * @property {number} [amount]  the order's (sale) or the refund's (refund), minor units
 * @property {string} [currency]
 * @property {string} [issued_at]
 */

/** @param {ReceiptView} receipt */
const receiptName = (receipt) => receipt.label ?? /** @type {any} */ (receipt).display_number ?? String(receipt.number);

const NAME_KEY = "orderstatus-demo:customer";
const PAYMENT_EVENT = "payment.status";
const REFUND_EVENT = "refund.status";
const RECEIPT_EVENT = "receipt.issued";
const MONEY_KINDS = new Set([PAYMENT_EVENT, REFUND_EVENT, RECEIPT_EVENT]);
/** @type {Record<string, string>} */
const REFUND_LABELS = {
  REQUESTED: "Refund requested",
  PENDING: "Refund on its way",
  SUCCEEDED: "Refunded",
  FAILED: "Refund failed",
};
/** The gateway the demo pays with: the sandbox bundled with the server. */
const GATEWAY = "sandbox";
const PAY_WINDOW = "orderstatus-pay";
const FAILED_PAYMENTS = new Set(["FAILED", "EXPIRED", "CANCELLED"]);
/** @type {Record<string, string>} */
const PAYMENT_LABELS = {
  INITIATED: "Payment started",
  PENDING: "Payment pending",
  COMPLETED: "Payment received",
  FAILED: "Payment failed",
  EXPIRED: "Payment expired",
  CANCELLED: "Payment cancelled",
  PARTIALLY_REFUNDED: "Partly refunded",
  REFUNDED: "Refunded",
};
/** @param {string} status */
const paymentLabel = (status) => PAYMENT_LABELS[status] ?? status;
const HISTORY_PAGE = 5;
const NAME_RE = /^[A-Za-z0-9._-]{1,40}$/;

const state = {
  /** @type {string|null} */ name: null,
  /** @type {ReturnType<typeof demoTokenSource>|null} */ tokens: null,
  /** @type {import("./orderstatus.js").OrderStatusClient|null} */ client: null,
  /** @type {Map<string, Order>} every order we know, from the stream and from history */
  orders: new Map(),
  /** @type {string[]} order ids in the history list, newest first */
  history: [],
  /** @type {string|null} */ nextCursor: null,
  /** @type {string|null} */ selectedId: null,
  /** @type {Map<string, Map<number, TimelineEntry>>} */ timelines: new Map(),
  /** @type {Map<string, PaymentView>} the newest payment attempt we know of, per order */
  payments: new Map(),
  /** @type {Map<string, ReceiptView[]>} the receipts of each order we asked about */
  receipts: new Map(),
  /** seqs delivered live, in order (for the end-to-end tests and the curious) */
  /** @type {number[]} */ received: [],
  busy: false,
};

// For debugging from the console and for the browser tests.
Object.assign(window, { orderstatusDemo: state });

// -- sign-in -----------------------------------------------------------------------------------

async function signIn(/** @type {string} */ name) {
  const tokens = demoTokenSource({ sub: name, role: "customer" });
  try {
    await tokens.getToken();
  } catch (error) {
    showBanner({ title: "Could not sign in", detail: describeError(error) });
    return false;
  }
  hideBanner();
  state.name = name;
  state.tokens = tokens;
  localStorage.setItem(NAME_KEY, name);
  $("who-name").textContent = name;
  $("who").hidden = false;
  $("signin").hidden = true;
  $("app").hidden = false;
  state.client = connect({
    baseUrl: location.origin,
    getToken: tokens.getToken,
    backoffMaxMs: 8000,
    onStatus: connectionStatusHandler(renderStreamInfo),
    onSnapshot: (orders, info) => {
      for (const order of orders) mergeOrder(order);
      if (info.reason === "reset") refreshStale(orders);
      if (!state.selectedId) {
        const open = orders.find((o) => !isTerminal(o.status));
        if (open) selectOrder(open.id);
      }
      renderAll();
    },
    onEvent: onEvent,
  });
  await loadHistory(false);
  return true;
}

async function signOut() {
  const client = state.client;
  state.client = null;
  await client?.stop();
  localStorage.removeItem(NAME_KEY);
  Object.assign(state, { name: null, tokens: null, history: [], nextCursor: null, selectedId: null, received: [] });
  state.orders.clear();
  state.payments.clear();
  state.receipts.clear();
  state.timelines.clear();
  renderConnection($("conn"), { state: "idle" });
  $("who").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  hideBanner();
  renderAll();
  /** @type {HTMLInputElement} */ ($("signin-name")).focus();
}

// -- live updates ------------------------------------------------------------------------------

/** @param {StreamEvent} event */
function onEvent(event) {
  state.received.push(event.seq);
  if (event.order) mergeOrder(event.order);
  addTimeline(event.order_id, event);
  if (!state.history.includes(event.order_id)) state.history.unshift(event.order_id);
  if (!state.selectedId) selectOrder(event.order_id);
  if (event.kind === RECEIPT_EVENT) {
    // The event carries the receipt's short form: show it now, then read the list for the rest.
    const short = /** @type {any} */ (event).receipt;
    if (short && typeof short.number === "number") {
      const known = (state.receipts.get(event.order_id) ?? []).filter((r) => r.number !== short.number);
      state.receipts.set(event.order_id, [...known, short].sort((a, b) => a.number - b.number));
    }
    loadReceipts(event.order_id);
    if (event.order_id === state.selectedId) announce(`Order ${shortId(event.order_id)}: a receipt was issued.`);
  } else if (event.kind === REFUND_EVENT && event.status) {
    if (event.order_id === state.selectedId) announce(`Order ${shortId(event.order_id)}: ${REFUND_LABELS[event.status] ?? event.status}.`);
  } else if (event.kind === PAYMENT_EVENT && event.status) {
    const known = state.payments.get(event.order_id);
    if (known) state.payments.set(event.order_id, { ...known, status: event.status });
    if (event.order_id === state.selectedId) announce(`Order ${shortId(event.order_id)}: ${paymentLabel(event.status)}.`);
  } else if (event.order_id === state.selectedId && event.status) {
    announce(`Order ${shortId(event.order_id)} is now ${statusLabel(event.status)}.`);
  }
  renderAll();
}

/**
 * After a reset the snapshot holds the open orders; any order we still show as open that it
 * lacks has moved on while we could not follow: read it again.
 * @param {Order[]} snapshot
 */
async function refreshStale(snapshot) {
  const tokens = state.tokens;
  if (!tokens) return;
  const inSnapshot = new Set(snapshot.map((o) => o.id));
  const stale = [...state.orders.values()].filter((o) => !isTerminal(o.status) && !inSnapshot.has(o.id));
  for (const order of stale) {
    try {
      const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(order.id)}`, { token: await tokens.token() });
      mergeOrder(body.order);
    } catch (error) {
      console.warn("could not refresh order", order.id, error);
    }
  }
  if (stale.length) renderAll();
}

/** Keep the newest version of an order. @param {Order} order */
function mergeOrder(order) {
  const known = state.orders.get(order.id);
  if (!known || (order.version ?? 0) >= (known.version ?? 0)) state.orders.set(order.id, order);
}

/**
 * @param {string} orderId
 * @param {TimelineEntry} entry
 */
function addTimeline(orderId, entry) {
  let timeline = state.timelines.get(orderId);
  if (!timeline) {
    timeline = new Map();
    state.timelines.set(orderId, timeline);
  }
  // A live payment, refund or receipt event carries its record; the audit trail only the
  // server's note, which counts in minor units: read the amount and reason from it.
  const live = /** @type {any} */ (entry);
  const record = live.payment ?? live.refund ?? live.receipt ?? null;
  const currency = state.orders.get(orderId)?.currency ?? CURRENCY;
  const money =
    record && typeof record.amount === "number"
      ? {
          amount: record.amount,
          currency: String(record.currency ?? currency),
          reason: live.refund ? String(live.refund.reason ?? "") || null : null,
        }
      : (moneyFromNote(entry.kind ?? "", entry.note ?? null, currency) ?? timeline.get(entry.event_id)?.money ?? null);
  timeline.set(entry.event_id, {
    money,
    event_id: entry.event_id,
    status: entry.status,
    previous_status: entry.previous_status,
    source: entry.source,
    at: entry.at,
    note: entry.note ?? null,
    kind: entry.kind ?? "order.status",
  });
}

/** @param {string} orderId */
async function selectOrder(orderId) {
  state.selectedId = orderId;
  renderAll();
  const tokens = state.tokens;
  if (!tokens) return;
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}/events`, { token: await tokens.token() });
    for (const entry of body.events ?? []) addTimeline(orderId, entry);
    if (state.selectedId === orderId) renderTracker();
    const known = state.orders.get(orderId);
    if (known && known.payment_method === "online") await loadPayments(orderId);
    await loadReceipts(orderId);
  } catch (error) {
    console.warn("could not load the order's history", error);
  }
}

/**
 * The order with its payment attempts; asking also lets the server check a long-pending
 * payment with the gateway (the read-triggered check).
 * @param {string} orderId
 */
async function loadPayments(orderId) {
  const tokens = state.tokens;
  if (!tokens) return;
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}`, { token: await tokens.token() });
    mergeOrder(body.order);
    const payments = /** @type {PaymentView[]} */ (body.payments ?? []);
    const newest = payments[payments.length - 1];
    if (newest) state.payments.set(orderId, newest);
    if (state.selectedId === orderId) renderTracker();
  } catch (error) {
    console.warn("could not load the order's payments", error);
  }
}

/**
 * The order's receipts (a receipt is issued when it is fully paid and after each refund).
 * @param {string} orderId
 */
async function loadReceipts(orderId) {
  const tokens = state.tokens;
  if (!tokens) return;
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}/receipts`, { token: await tokens.token() });
    state.receipts.set(orderId, /** @type {ReceiptView[]} */ (body.receipts ?? []));
  } catch (error) {
    // A server without receipts yet answers 404: the page simply shows none.
    console.warn("could not load the order's receipts", error);
    return;
  }
  if (state.selectedId === orderId) renderTracker();
}

/**
 * Open a receipt's printable page in a new tab. It needs the bearer token, which a plain link
 * cannot send: fetch it, and show it from a blob URL in a window opened during the click
 * (browsers block windows opened after an await).
 * @param {string} orderId
 * @param {ReceiptView} receipt
 */
async function openReceipt(orderId, receipt) {
  const tokens = state.tokens;
  if (!tokens) return;
  const win = window.open("", "_blank");
  if (win) win.document.title = "Loading the receipt…";
  try {
    const response = await fetch(`/api/orders/${encodeURIComponent(orderId)}/receipts/${encodeURIComponent(String(receipt.number))}.html`, {
      headers: { Authorization: `Bearer ${await tokens.token()}`, Accept: "text/html" },
    });
    if (!response.ok) throw new Error(`the server answered ${response.status} ${response.statusText}`);
    const url = URL.createObjectURL(new Blob([receiptDocument(await response.text(), response.headers.get("Content-Security-Policy"))], { type: "text/html" }));
    if (win) win.location.href = url;
    else window.open(url, "_blank");
    // Long enough for the new tab to load it; then the memory is given back.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    win?.close();
    showBanner({ title: `Could not open receipt ${receiptName(receipt)}`, detail: describeError(error) });
  }
}

// -- REST actions ------------------------------------------------------------------------------

/**
 * A window for the gateway's payment page, opened while the click still counts as the user's
 * (browsers block popups opened later, after an await); null if blocked.
 */
function openPaymentWindow() {
  const win = window.open("", PAY_WINDOW);
  if (win) win.document.title = "Redirecting to the payment page…";
  return win;
}

/**
 * Start a payment attempt for the order on the sandbox gateway and show its page.
 * @param {string} orderId
 * @param {Window|null} win a window opened during the click, or null to open one now
 */
async function startPayment(orderId, win) {
  const tokens = state.tokens;
  if (!tokens) return;
  const payWindow = win ?? openPaymentWindow();
  state.busy = true;
  renderTracker();
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}/payments`, {
      method: "POST",
      token: await tokens.token(),
      body: { gateway: GATEWAY },
    });
    const payment = /** @type {PaymentView} */ ({ ...body.payment, redirect_url: body.redirect_url ?? body.payment?.redirect_url ?? null });
    state.payments.set(orderId, payment);
    hideBanner();
    if (payment.redirect_url) {
      if (payWindow) payWindow.location.href = payment.redirect_url;
      announce("The payment page is open. Approve or decline it there; this page follows along.");
    } else {
      payWindow?.close();
    }
  } catch (error) {
    payWindow?.close();
    showBanner({ title: `Could not start the payment for order ${shortId(orderId)}`, detail: describeError(error) });
  } finally {
    state.busy = false;
    renderAll();
  }
}

/** @param {boolean} more */
async function loadHistory(more) {
  const tokens = state.tokens;
  if (!tokens) return;
  const button = /** @type {HTMLButtonElement} */ ($("history-more"));
  button.disabled = true;
  try {
    const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
    if (more && state.nextCursor) params.set("cursor", state.nextCursor);
    const body = await apiRequest(location.origin, `/api/orders?${params}`, { token: await tokens.token() });
    if (tokens !== state.tokens) return; // signed out meanwhile
    for (const order of body.orders ?? []) {
      mergeOrder(order);
      if (!state.history.includes(order.id)) state.history.push(order.id);
    }
    state.nextCursor = body.next_cursor ?? null;
    if (!state.selectedId && state.history.length) selectOrder(state.history[0]);
  } catch (error) {
    showBanner({ title: "Could not load your orders", detail: describeError(error) });
  } finally {
    button.disabled = false;
    renderAll();
  }
}

/** @param {SubmitEvent} event */
async function placeOrder(event) {
  event.preventDefault();
  const tokens = state.tokens;
  if (!tokens || state.busy) return;
  const form = /** @type {HTMLFormElement} */ (event.currentTarget);
  const data = new FormData(form);
  const items = MENU.map((item) => ({ ...item, quantity: Number(data.get(`qty-${item.sku}`) || 0) })).filter((i) => i.quantity > 0);
  const errorEl = $("order-error");
  if (!items.length) {
    errorEl.textContent = "Choose at least one item.";
    errorEl.hidden = false;
    /** @type {HTMLElement} */ (form.querySelector("input[type=number]"))?.focus();
    return;
  }
  errorEl.hidden = true;
  const submit = /** @type {HTMLButtonElement} */ ($("order-submit"));
  state.busy = true;
  submit.disabled = true;
  submit.textContent = "Placing order…";
  const online = String(data.get("payment") || "cash") === "online";
  const payWindow = online ? openPaymentWindow() : null;
  try {
    const body = await apiRequest(location.origin, "/api/orders", {
      method: "POST",
      // One key for this click: a retry of a lost answer never places a second order.
      idempotencyKey: newIdempotencyKey(),
      token: await tokens.token(),
      body: {
        store_id: String(data.get("store")),
        currency: CURRENCY,
        payment_method: String(data.get("payment") || "cash"),
        items: items.map(({ sku, name, quantity, unit_price }) => ({ sku, name, quantity, unit_price })),
      },
    });
    const order = /** @type {Order} */ (body.order);
    mergeOrder(order);
    if (!state.history.includes(order.id)) state.history.unshift(order.id);
    for (const input of form.querySelectorAll("input[type=number]")) /** @type {HTMLInputElement} */ (input).value = "0";
    updateTotal();
    announce(`Order ${shortId(order.id)} placed: ${statusLabel(order.status)}.`);
    await selectOrder(order.id);
    $("tracker").scrollIntoView({ behavior: "smooth", block: "nearest" });
    if (online) {
      state.busy = false;
      await startPayment(order.id, payWindow);
    }
  } catch (error) {
    payWindow?.close();
    errorEl.textContent = `Could not place the order. ${describeError(error)}`;
    errorEl.hidden = false;
  } finally {
    state.busy = false;
    submit.disabled = false;
    submit.textContent = "Place order";
  }
}

/** @param {string} orderId */
async function cancelOrder(orderId) {
  const tokens = state.tokens;
  if (!tokens) return;
  const button = /** @type {HTMLButtonElement|null} */ (document.getElementById("cancel-order"));
  if (button) button.disabled = true;
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}/cancel`, {
      method: "POST",
      idempotencyKey: newIdempotencyKey(),
      token: await tokens.token(),
      body: { reason: "Cancelled by the customer" },
    });
    mergeOrder(body.order);
    hideBanner();
  } catch (error) {
    const allowed = /** @type {any} */ (error)?.details?.allowed;
    showBanner({
      title: `Could not cancel order ${shortId(orderId)}`,
      detail: describeError(error),
      lines: Array.isArray(allowed) ? [allowed.length ? `Allowed now: ${allowed.map(statusLabel).join(", ")}.` : "It can no longer change."] : [],
    });
  } finally {
    renderAll();
  }
}

// -- rendering ---------------------------------------------------------------------------------

function renderAll() {
  renderTracker();
  renderHistory();
  renderStreamInfo();
}

function renderStreamInfo() {
  const client = state.client;
  $("stream-info").textContent = client && client.stream ? `${client.stream} · seq ${client.lastSeq}` : "";
}

/** @type {Record<string, string>} */
const SOURCES = {
  customer: "by you",
  pos: "by the store",
  webhook: "payment gateway",
  reconciler: "automatically",
  read_check: "payment check",
  system: "automatically",
};

function renderTracker() {
  const tracker = $("tracker");
  const body = $("tracker-body");
  const order = state.selectedId ? state.orders.get(state.selectedId) : undefined;
  if (!order) {
    tracker.dataset.status = "";
    delete tracker.dataset.orderId;
    $("tracker-id").textContent = "";
    body.replaceChildren(h("p", { class: "empty" }, "No order yet. Place one and watch it move here, live."));
    return;
  }
  tracker.dataset.status = order.status;
  tracker.dataset.orderId = order.id;
  $("tracker-id").textContent = shortId(order.id);
  const timeline = [...(state.timelines.get(order.id)?.values() ?? [])].sort((a, b) => a.event_id - b.event_id);
  const canCancel = allowedNext(order.status, "customer").includes("CANCELLED");

  fill(
    body,
    h(
      "div",
      { class: "tracker__status" },
      h("p", { id: "tracker-status", class: "tracker__now", role: "status", dataset: { status: order.status } }, statusLabel(order.status)),
      h("p", { class: "muted small" }, `${storeName(order.store_id)} · placed ${formatDateTime(order.created_at)} · ${order.payment_method === "cash" ? "Cash" : "Online"}`),
    ),
    renderSteps(order, timeline),
    isTerminal(order.status) && order.status !== "DELIVERED"
      ? h("p", { class: "callout callout--bad" }, order.status === "CANCELLED" ? "This order was cancelled." : "This order expired before it was paid.")
      : null,
    h(
      "ul",
      { class: "lines" },
      ...order.items.map((item) =>
        h("li", { class: "lines__row" }, h("span", null, `${item.quantity}× ${item.name}`), h("span", { class: "num" }, formatMoney(item.quantity * item.unit_price, order.currency))),
      ),
      h("li", { class: "lines__row lines__row--total" }, h("span", null, "Total"), h("span", { class: "num" }, formatMoney(order.amount, order.currency))),
    ),
    renderMoney(order),
    renderPayment(order),
    renderReceipts(order),
    canCancel
      ? h("div", { class: "actions" }, h("button", { id: "cancel-order", class: "btn btn--danger-ghost", type: "button", onclick: () => cancelOrder(order.id) }, "Cancel order"))
      : null,
    h("h3", { class: "subhead" }, "Updates"),
    timeline.length
      ? h(
          "ol",
          { id: "timeline", class: "timeline" },
          ...timeline.map((entry) =>
            h(
              "li",
              { class: "timeline__item", dataset: { status: entry.status ?? "", eventId: String(entry.event_id) } },
              h("span", { class: "timeline__dot", "aria-hidden": "true" }),
              h("span", { class: "timeline__what" }, timelineLabel(entry)),
              h("span", { class: "timeline__meta" }, `${formatTime(entry.at)} · ${SOURCES[entry.source] ?? entry.source}${timelineNote(entry)}`),
            ),
          ),
        )
      : h("p", { class: "muted small" }, "Loading updates…"),
  );
}

/**
 * What a timeline entry says, by its kind.
 * @param {TimelineEntry} entry
 */
function timelineLabel(entry) {
  const status = entry.status ?? "";
  if (entry.kind === PAYMENT_EVENT) return paymentLabel(status);
  if (entry.kind === REFUND_EVENT) return REFUND_LABELS[status] ?? `Refund ${status.toLowerCase()}`;
  if (entry.kind === RECEIPT_EVENT) return "Receipt issued";
  return statusLabel(status);
}

/**
 * What follows an entry's time: an order change's note as written; for money, the amount (in
 * the currency's units, not the server's note in minor units) and a refund's reason.
 * @param {TimelineEntry} entry
 */
function timelineNote(entry) {
  if (!MONEY_KINDS.has(entry.kind ?? "")) return entry.note ? ` · “${entry.note}”` : "";
  // A payment marked (partly) refunded: the refund's own entry says how much.
  if (!entry.money || (entry.kind === PAYMENT_EVENT && /REFUNDED$/.test(entry.status ?? ""))) return "";
  const reason = entry.money.reason ? ` · “${entry.money.reason}”` : "";
  return ` · ${formatMoney(entry.money.amount, entry.money.currency)}${reason}`;
}

/**
 * Paid / refunded / outstanding, as of the newest version of the order (its payment_summary).
 * @param {Order} order
 */
function renderMoney(order) {
  const s = order.payment_summary;
  if (!s) return null;
  /** @param {string} key @param {string} label @param {number} value */
  const row = (key, label, value) => h("div", { class: `money__row money__row--${key}` }, h("dt", null, label), h("dd", { id: `money-${key}`, class: "num", dataset: { minor: String(value) } }, formatMoney(value, s.currency)));
  return h(
    "dl",
    { id: "money", class: "money", "aria-label": "Payment", dataset: { outstanding: String(s.outstanding) } },
    row("paid", "Paid", s.paid),
    row("refunded", "Refunded", s.refunded),
    row("outstanding", s.outstanding ? (order.payment_method === "cash" ? "To pay at the store" : "Outstanding") : "Outstanding", s.outstanding),
  );
}

/**
 * The order's receipts, each opening its printable page.
 * @param {Order} order
 */
function renderReceipts(order) {
  const receipts = state.receipts.get(order.id) ?? [];
  if (!receipts.length) return null;
  return h(
    "div",
    { class: "receipts" },
    h("h3", { class: "subhead" }, "Receipts"),
    h(
      "ul",
      { id: "receipts", class: "receipts__list" },
      ...receipts.map((receipt) =>
        h(
          "li",
          { dataset: { number: String(receipt.number), kind: receipt.kind ?? "" } },
          h(
            "a",
            {
              href: `/api/orders/${encodeURIComponent(order.id)}/receipts/${encodeURIComponent(String(receipt.number))}.html`,
              onclick: (/** @type {MouseEvent} */ event) => {
                event.preventDefault();
                openReceipt(order.id, receipt);
              },
            },
            `Receipt ${receiptName(receipt)}`,
          ),
          h(
            "span",
            { class: "muted small" },
            ` · ${receipt.kind === "refund" ? "refund" : "sale"}${typeof receipt.amount === "number" ? ` ${formatMoney(receipt.amount, receipt.currency ?? order.currency)}` : ""}${receipt.issued_at ? ` · ${formatDateTime(receipt.issued_at)}` : ""}`,
          ),
        ),
      ),
    ),
  );
}

/**
 * What the customer can do about paying an online order that waits for its payment.
 * @param {Order} order
 */
function renderPayment(order) {
  if (order.payment_method !== "online" || order.status !== "PENDING_PAYMENT") return null;
  const payment = state.payments.get(order.id);
  const status = payment?.status ?? order.payment_status;
  const failed = FAILED_PAYMENTS.has(status);
  const live = status === "INITIATED" || status === "PENDING";
  const payButton = h(
    "button",
    { id: "pay-order", class: "btn btn--primary", type: "button", disabled: state.busy || null, onclick: () => startPayment(order.id, null) },
    failed ? "Try again" : "Pay now",
  );
  if (failed) {
    return h(
      "div",
      { id: "payment-panel", class: "callout callout--bad", dataset: { payment: status } },
      h("p", null, h("strong", null, "Payment failed — try again."), status === "FAILED" ? " The gateway declined the last attempt; nothing was charged." : ` The last attempt ended: ${paymentLabel(status).toLowerCase()}; nothing was charged.`),
      h("div", { class: "actions" }, payButton),
    );
  }
  if (live) {
    return h(
      "div",
      { id: "payment-panel", class: "callout", dataset: { payment: status } },
      h("p", null, "Waiting for the payment… this page updates the moment the gateway confirms it."),
      payment?.redirect_url
        ? h("p", null, h("a", { id: "payment-link", href: payment.redirect_url, target: PAY_WINDOW, rel: "opener" }, "Open the payment page"))
        : null,
    );
  }
  return h("div", { id: "payment-panel", class: "callout", dataset: { payment: status } }, h("p", null, "This order waits for its payment."), h("div", { class: "actions" }, payButton));
}

/**
 * @param {Order} order
 * @param {TimelineEntry[]} timeline
 */
function renderSteps(order, timeline) {
  const steps = trackerSteps(order);
  const pickup = timeline.some((e) => e.status === "DELIVERED" && e.previous_status === "READY");
  let reached = steps.indexOf(order.status);
  if (reached < 0) {
    // Cancelled or expired: the last step it reached is where it stopped.
    const stop = [...timeline].reverse().find((e) => e.status === order.status);
    reached = stop && stop.previous_status ? steps.indexOf(stop.previous_status) : -1;
  }
  const stopped = isTerminal(order.status) && order.status !== "DELIVERED";
  return h(
    "ol",
    { class: `steps${stopped ? " steps--stopped" : ""}`, "aria-label": "Order progress" },
    ...steps.map((step, index) => {
      let kind = index < reached ? "done" : index === reached ? (order.status === "DELIVERED" || stopped ? "done" : "current") : "todo";
      let label = statusLabel(step);
      if (pickup && step === "OUT_FOR_DELIVERY") {
        kind = "skipped";
        label = "Pickup — no delivery";
      }
      if (pickup && step === "DELIVERED") label = "Picked up";
      return h(
        "li",
        { class: `step step--${kind}`, dataset: { step }, "aria-current": kind === "current" ? "step" : null },
        h("span", { class: "step__marker", "aria-hidden": "true" }),
        h("span", { class: "step__label" }, label),
        h("span", { class: "visually-hidden" }, kind === "done" ? " (done)" : kind === "current" ? " (now)" : kind === "skipped" ? " (skipped)" : ""),
      );
    }),
  );
}

function renderHistory() {
  const list = $("history");
  const rows = state.history.map((id) => state.orders.get(id)).filter((o) => o !== undefined);
  list.replaceChildren(
    ...rows.map((order) =>
      h(
        "li",
        null,
        h(
          "button",
          {
            type: "button",
            class: `history__row${order.id === state.selectedId ? " is-selected" : ""}`,
            "aria-pressed": order.id === state.selectedId ? "true" : "false",
            dataset: { orderId: order.id, status: order.status },
            onclick: () => selectOrder(order.id),
          },
          h("span", { class: "history__id mono" }, shortId(order.id)),
          h("span", { class: "history__what" }, itemsSummary(order.items)),
          h("span", { class: "history__when muted" }, `${storeName(order.store_id)} · ${formatDateTime(order.created_at)}`),
          h("span", { class: "history__amount num" }, formatMoney(order.amount, order.currency)),
          statusPill(order.status, statusLabel(order.status)),
        ),
      ),
    ),
  );
  $("history-empty").hidden = rows.length > 0 || !state.tokens;
  $("history-more").hidden = !state.nextCursor;
}

// -- the order form ----------------------------------------------------------------------------

function buildForm() {
  const storeSelect = /** @type {HTMLSelectElement} */ ($("order-store"));
  storeSelect.replaceChildren(...STORES.map((s) => h("option", { value: s.id }, `${s.name} (${s.id})`)));
  $("menu-items").replaceChildren(
    ...MENU.map((item) =>
      h(
        "div",
        { class: "menu__item" },
        h("label", { for: `qty-${item.sku}`, class: "menu__name" }, item.name, h("span", { class: "menu__price" }, formatMoney(item.unit_price, CURRENCY))),
        h("input", { id: `qty-${item.sku}`, name: `qty-${item.sku}`, type: "number", min: "0", max: "20", step: "1", value: "0", inputmode: "numeric", class: "qty", oninput: updateTotal }),
      ),
    ),
  );
  updateTotal();
}

function updateTotal() {
  let total = 0;
  for (const item of MENU) {
    const input = /** @type {HTMLInputElement|null} */ (document.getElementById(`qty-${item.sku}`));
    const quantity = Math.max(0, Math.min(20, Math.floor(Number(input?.value || 0)) || 0));
    total += quantity * item.unit_price;
  }
  $("order-total").textContent = formatMoney(total, CURRENCY);
}

// -- start -------------------------------------------------------------------------------------

function init() {
  buildForm();
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("signin-name"));
    const name = input.value.trim();
    if (!NAME_RE.test(name)) {
      input.setAttribute("aria-invalid", "true");
      showBanner({ title: "Please enter a name", detail: "Use 1–40 letters, digits, dots, dashes or underscores." });
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    const button = /** @type {HTMLButtonElement} */ ($("signin-submit"));
    button.disabled = true;
    try {
      await signIn(name);
    } finally {
      button.disabled = false;
    }
  });
  $("order-form").addEventListener("submit", (event) => placeOrder(/** @type {SubmitEvent} */ (event)));
  $("history-more").addEventListener("click", () => loadHistory(true));
  $("sign-out").addEventListener("click", () => signOut());
  const saved = localStorage.getItem(NAME_KEY);
  if (saved && NAME_RE.test(saved)) signIn(saved);
  else /** @type {HTMLInputElement} */ ($("signin-name")).focus();
}

init();
