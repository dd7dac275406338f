// @ts-check
/**
 * The POS board: a store's orders in columns by status, a card per order with buttons only
 * for the moves the workflow allows a terminal, and any refusal (409) shown plainly; the
 * order's money (paid / refunded / owed) with "Record payment" and "Refund", each confirmed in
 * a dialog that says exactly what will happen before anything is sent.
 */

import { ApiError, apiRequest, connect, newIdempotencyKey } from "./orderstatus.js";
import { METHOD_LABELS, describeManualPayment, describeRefund, minorToDecimal, parseAmount } from "./money.js";
import { actionLabel, allowedNext, isTerminal, statusLabel } from "./workflow.js";
import {
  connectionStatusHandler,
  $,
  STORES,
  announce,
  demoTokenSource,
  describeError,
  formatMoney,
  formatTime,
  h,
  hideBanner,
  renderConnection,
  shortId,
  showBanner,
  storeName,
  timeAgo,
} from "./ui.js";

/** @typedef {import("./orderstatus.js").Order} Order */
/** @typedef {import("./orderstatus.js").StreamEvent} StreamEvent */

const SESSION_KEY = "orderstatus-demo:pos";
const DONE_LIMIT = 12;

/** @type {Record<string, string>} how an online order's payment reads on its card */
const PAYMENT_CHIPS = {
  UNPAID: "unpaid",
  INITIATED: "paying…",
  PENDING: "paying…",
  COMPLETED: "paid",
  FAILED: "payment failed",
  EXPIRED: "payment expired",
  CANCELLED: "payment cancelled",
  PARTIALLY_REFUNDED: "partly refunded",
  REFUNDED: "refunded",
};

const COLUMNS = [
  { id: "PENDING_PAYMENT", title: "Awaiting payment", statuses: ["PENDING_PAYMENT"] },
  { id: "CONFIRMED", title: "New", statuses: ["CONFIRMED"] },
  { id: "PREPARING", title: "Preparing", statuses: ["PREPARING"] },
  { id: "READY", title: "Ready", statuses: ["READY"] },
  { id: "OUT_FOR_DELIVERY", title: "Out for delivery", statuses: ["OUT_FOR_DELIVERY"] },
  { id: "DONE", title: "Completed", statuses: ["DELIVERED", "CANCELLED", "EXPIRED"] },
];

const state = {
  /** @type {string|null} */ storeId: null,
  /** @type {string|null} */ terminal: null,
  /** @type {ReturnType<typeof demoTokenSource>|null} */ tokens: null,
  /** @type {import("./orderstatus.js").OrderStatusClient|null} */ client: null,
  /** @type {Map<string, Order>} */ orders: new Map(),
  /** @type {Set<string>} orders with a request in flight */ busy: new Set(),
  /** @type {Set<string>} orders changed a moment ago (highlighted) */ fresh: new Set(),
  /** @type {number[]} */ received: [],
};

/**
 * Move an order (what the card buttons do). Resolves to the outcome; errors go to the banner.
 * @param {string} orderId
 * @param {string} to
 * @returns {Promise<{ok: boolean, status?: number, code?: string}>}
 */
async function requestStatus(orderId, to) {
  const tokens = state.tokens;
  if (!tokens) return { ok: false, code: "signed_out" };
  state.busy.add(orderId);
  renderBoard();
  try {
    const body = await apiRequest(location.origin, `/api/pos/orders/${encodeURIComponent(orderId)}/status`, {
      method: "POST",
      // One key per click on a move button, reused by apiRequest's retries.
      idempotencyKey: newIdempotencyKey(),
      token: await tokens.token(),
      body: { status: to },
    });
    mergeOrder(body.order);
    announce(`Order ${shortId(orderId)} moved to ${statusLabel(body.order.status)}.`);
    return { ok: true, status: 200 };
  } catch (error) {
    showRefusal(orderId, to, error);
    if (error instanceof ApiError && (error.status === 409 || error.status === 404)) await refreshOrder(orderId);
    return { ok: false, status: error instanceof ApiError ? error.status : 0, code: error instanceof ApiError ? error.code : "network" };
  } finally {
    state.busy.delete(orderId);
    renderBoard();
  }
}

// For debugging from the console and for the browser tests.
Object.assign(window, {
  posBoard: {
    state,
    requestStatus,
    get dialog() {
      return dialog;
    },
    get client() {
      return state.client;
    },
  },
});

/**
 * Say plainly why a move was refused, and what the order can do now.
 * @param {string} orderId
 * @param {string} to
 * @param {unknown} error
 */
function showRefusal(orderId, to, error) {
  const title = `Order ${shortId(orderId)} could not be moved to ${statusLabel(to)}`;
  if (error instanceof ApiError && error.status === 409) {
    const now = typeof error.details.status === "string" ? error.details.status : null;
    const allowed = Array.isArray(error.details.allowed) ? error.details.allowed.map(String) : [];
    const lines = [];
    if (now) lines.push(`It is ${statusLabel(now)} now — another terminal or the system may have moved it.`);
    lines.push(allowed.length ? `Allowed next: ${allowed.map(statusLabel).join(", ")}.` : "Allowed next: nothing, this order can no longer change.");
    showBanner({ title, detail: `409 ${error.code}: ${error.message}`, lines });
  } else {
    showBanner({ title, detail: describeError(error) });
  }
}

// -- money: record a payment, refund -----------------------------------------------------------

/** @type {Array<[string, string]>} the methods a terminal records, and how the select reads */
const METHODS = [
  ["cash", "Cash"],
  ["card_terminal", "Card terminal"],
  ["bank_transfer", "Bank transfer"],
  ["other", "Other"],
];

/**
 * The open money dialog (null when closed). `key` is the Idempotency-Key of this user action:
 * kept while the request body stays the same, so confirming again after a lost answer can never
 * record or refund twice; a changed body is another action and gets a fresh key.
 * @typedef {Object} MoneyDialog
 * @property {"payment"|"refund"} kind
 * @property {string} orderId
 * @property {"edit"|"confirm"} step
 * @property {string} method
 * @property {string} amountText
 * @property {string} reference
 * @property {string} reason
 * @property {number} amount the parsed amount (minor units) under review
 * @property {number} limit outstanding (payment) or refundable (refund) when reviewed
 * @property {Array<Record<string, any>>} payments the order's payments (where a refund goes)
 * @property {string|null} key
 * @property {string|null} sentBody
 * @property {boolean} busy
 * @property {{text: string, lines: string[]}|null} error
 * @property {string|null} fieldError
 */
/** @type {MoneyDialog|null} */
let dialog = null;

/** @param {Order} order */
function summaryOf(order) {
  const s = order.payment_summary;
  return {
    paid: s?.paid ?? 0,
    refunded: s?.refunded ?? 0,
    outstanding: s?.outstanding ?? 0,
    currency: s?.currency ?? order.currency,
    canRefund: Boolean(s?.can_refund),
  };
}

/** What may be refunded as far as the board knows (the server has the last word: 422 refundable). */
/** @param {Order} order */
function refundableOf(order) {
  const s = summaryOf(order);
  return Math.max(s.paid - s.refunded, 0);
}

/** @param {Order} order */
function canRecordPayment(order) {
  return !isTerminal(order.status) && summaryOf(order).outstanding > 0;
}

function dialogEl() {
  return /** @type {HTMLDialogElement} */ ($("money-dialog"));
}

/**
 * Open the dialog for an order (what the card's money buttons do).
 * @param {"payment"|"refund"} kind
 * @param {string} orderId
 */
async function openMoneyDialog(kind, orderId) {
  const order = state.orders.get(orderId);
  if (!order) return;
  const s = summaryOf(order);
  const limit = kind === "payment" ? s.outstanding : refundableOf(order);
  dialog = {
    kind,
    orderId,
    step: "edit",
    method: "cash",
    amountText: minorToDecimal(limit, s.currency),
    reference: "",
    reason: "",
    amount: limit,
    limit,
    payments: [],
    key: null,
    sentBody: null,
    busy: false,
    error: null,
    fieldError: null,
  };
  renderDialog();
  const el = dialogEl();
  if (!el.open) el.showModal();
  focusDialog();
  if (kind === "refund") {
    // Where the refund goes (cash back at the counter, or a gateway) is in the payments.
    const opened = dialog;
    try {
      const tokens = state.tokens;
      if (!tokens) return;
      const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}`, { token: await tokens.token() });
      mergeOrder(body.order);
      if (dialog === opened) opened.payments = body.payments ?? [];
    } catch (error) {
      console.warn("could not load the order's payments", error);
    }
  }
}

/** @param {string} [why] */
function closeMoneyDialog(why = "cancelled") {
  const closing = dialog;
  dialog = null;
  const el = dialogEl();
  if (el.open) el.close(why);
  el.replaceChildren();
  if (closing) {
    // The board re-rendered meanwhile: give focus back to the same button on the new card.
    const card = document.querySelector(`[data-order-id="${CSS.escape(closing.orderId)}"]`);
    const button = card?.querySelector(`button[data-money="${closing.kind}"]`);
    if (button instanceof HTMLElement) button.focus();
    else if (card instanceof HTMLElement) {
      card.tabIndex = -1;
      card.focus();
    }
  }
}

function focusDialog() {
  const el = dialogEl();
  const target = dialog?.step === "confirm" ? el.querySelector("#money-question") : el.querySelector("input[aria-invalid=true], select, input, textarea");
  if (target instanceof HTMLElement) target.focus();
}

/** Check the form; on success the dialog moves to its confirmation step. */
function reviewMoney() {
  const d = dialog;
  if (!d) return;
  const order = state.orders.get(d.orderId);
  if (!order) return;
  const s = summaryOf(order);
  // The order may have changed live since the dialog opened: review against it as it is now.
  d.limit = d.kind === "payment" ? s.outstanding : refundableOf(order);
  d.error = null;
  d.fieldError = null;
  const parsed = parseAmount(d.amountText, s.currency);
  if (!parsed.ok) d.fieldError = parsed.error;
  else if (d.limit <= 0) {
    d.fieldError = d.kind === "payment" ? "Nothing is outstanding on this order any more." : "Nothing of this order is left to refund.";
  } else if (parsed.minor > d.limit) {
    d.fieldError = d.kind === "payment" ? `At most what is outstanding: ${formatMoney(d.limit, s.currency)}.` : `At most what may be refunded: ${formatMoney(d.limit, s.currency)}.`;
  } else if (d.kind === "refund" && !d.reason.trim()) {
    d.fieldError = null;
    d.error = { text: "Say why the money is refunded (the customer and the audit trail see it).", lines: [] };
  }
  if (d.fieldError || d.error) {
    renderDialog();
    focusDialog();
    return;
  }
  d.amount = parsed.ok ? parsed.minor : 0;
  d.step = "confirm";
  renderDialog();
  focusDialog();
}

/** Send what the confirmation said; errors stay in the dialog, success closes it. */
async function confirmMoney() {
  const d = dialog;
  const tokens = state.tokens;
  if (!d || !tokens || d.busy) return;
  const path =
    d.kind === "payment" ? `/api/pos/orders/${encodeURIComponent(d.orderId)}/payments` : `/api/orders/${encodeURIComponent(d.orderId)}/refunds`;
  const body =
    d.kind === "payment"
      ? { method: d.method, amount: d.amount, ...(d.reference.trim() ? { reference: d.reference.trim() } : {}) }
      : // Always the amount the person confirmed: "full" means what they saw, not whatever
        // became refundable since.
        { amount: d.amount, reason: d.reason.trim() };
  const serialized = JSON.stringify(body);
  if (d.sentBody !== serialized || !d.key) {
    d.key = newIdempotencyKey();
    d.sentBody = serialized;
  }
  d.busy = true;
  d.error = null;
  state.busy.add(d.orderId);
  renderDialog();
  renderBoard();
  try {
    const answer = await apiRequest(location.origin, path, { method: "POST", idempotencyKey: d.key, token: await tokens.token(), body });
    mergeOrder(answer.order);
    const order = /** @type {Order} */ (answer.order);
    const currency = order.payment_summary?.currency ?? order.currency;
    announce(
      d.kind === "payment"
        ? `Recorded ${formatMoney(d.amount, currency)} by ${METHOD_LABELS[/** @type {keyof typeof METHOD_LABELS} */ (d.method)] ?? d.method} for order ${shortId(d.orderId)}.`
        : `Refund of ${formatMoney(d.amount, currency)} for order ${shortId(d.orderId)} requested.`,
    );
    if (dialog === d) closeMoneyDialog("done");
  } catch (error) {
    if (dialog !== d) return;
    d.error = moneyError(error, summaryOf(state.orders.get(d.orderId) ?? /** @type {Order} */ ({ currency: "INR" })).currency);
    if (error instanceof ApiError) {
      // Refused: the order is not what this board thought; fix the form against the truth.
      d.step = "edit";
      await refreshOrder(d.orderId);
      const order = state.orders.get(d.orderId);
      if (order) d.limit = d.kind === "payment" ? summaryOf(order).outstanding : refundableOf(order);
    }
  } finally {
    d.busy = false;
    state.busy.delete(d.orderId);
    if (dialog === d) {
      renderDialog();
      focusDialog();
    }
    renderBoard();
  }
}

/**
 * Why a money request failed, plainly, from the JSON error body.
 * @param {unknown} error
 * @param {string} currency
 * @returns {{text: string, lines: string[]}}
 */
function moneyError(error, currency) {
  if (!(error instanceof ApiError)) {
    return {
      text: describeError(error),
      lines: ["The answer was lost. Confirming again is safe: it is sent with the same key, and the server does it at most once."],
    };
  }
  const lines = [];
  const { outstanding, refundable } = error.details;
  if (typeof outstanding === "number") lines.push(`Outstanding now: ${formatMoney(outstanding, currency)}.`);
  if (typeof refundable === "number") lines.push(`Refundable now: ${formatMoney(refundable, currency)}.`);
  if (error.code === "nothing_to_refund") lines.push("Everything paid has been refunded, or is being refunded.");
  return { text: `${error.status} ${error.code}: ${error.message}`, lines };
}

function renderDialog() {
  const el = dialogEl();
  const d = dialog;
  if (!d) {
    el.replaceChildren();
    return;
  }
  const order = state.orders.get(d.orderId);
  const currency = order ? summaryOf(order).currency : "INR";
  const label = shortId(d.orderId);
  const title = d.kind === "payment" ? `Record a payment · order ${label}` : `Refund · order ${label}`;
  const errorBox = d.error
    ? h("div", { id: "money-error", class: "callout callout--bad", role: "alert" }, h("p", null, h("strong", null, d.error.text)), ...d.error.lines.map((line) => h("p", null, line)))
    : null;
  /** @type {HTMLElement} */
  let content;
  if (d.step === "edit") {
    const limitText = d.kind === "payment" ? `Outstanding: ${formatMoney(d.limit, currency)}` : `Refundable: ${formatMoney(d.limit, currency)} (the full refund; lower it for a partial one)`;
    content = h(
      "form",
      {
        class: "form",
        novalidate: true,
        onsubmit: (/** @type {Event} */ event) => {
          event.preventDefault();
          reviewMoney();
        },
      },
      d.kind === "payment"
        ? h(
            "div",
            { class: "field" },
            h("label", { for: "money-method" }, "Method"),
            h(
              "select",
              { id: "money-method", onchange: (/** @type {Event} */ e) => (d.method = /** @type {HTMLSelectElement} */ (e.target).value) },
              ...METHODS.map(([value, text]) => h("option", { value, selected: value === d.method }, text)),
            ),
          )
        : null,
      h(
        "div",
        { class: "field" },
        h("label", { for: "money-amount" }, `Amount (${currency})`),
        h("input", {
          id: "money-amount",
          type: "text",
          inputmode: "decimal",
          autocomplete: "off",
          value: d.amountText,
          "aria-describedby": "money-amount-hint",
          "aria-invalid": d.fieldError ? "true" : null,
          oninput: (/** @type {Event} */ e) => (d.amountText = /** @type {HTMLInputElement} */ (e.target).value),
        }),
        h("p", { id: "money-amount-hint", class: "hint" }, limitText),
        d.fieldError ? h("p", { id: "money-amount-error", class: "field-error" }, d.fieldError) : null,
      ),
      d.kind === "payment"
        ? h(
            "div",
            { class: "field" },
            h("label", { for: "money-reference" }, "Reference ", h("span", { class: "hint", style: "display:inline" }, "(optional: slip or transfer number)")),
            h("input", { id: "money-reference", type: "text", maxlength: "200", value: d.reference, oninput: (/** @type {Event} */ e) => (d.reference = /** @type {HTMLInputElement} */ (e.target).value) }),
          )
        : h(
            "div",
            { class: "field" },
            h("label", { for: "money-reason" }, "Reason"),
            h("input", { id: "money-reason", type: "text", required: true, maxlength: "500", value: d.reason, placeholder: "e.g. cold coffee", oninput: (/** @type {Event} */ e) => (d.reason = /** @type {HTMLInputElement} */ (e.target).value) }),
          ),
      errorBox,
      h(
        "div",
        { class: "dialog__actions" },
        h("button", { type: "button", class: "btn btn--ghost", onclick: () => closeMoneyDialog() }, "Cancel"),
        h("button", { type: "submit", class: "btn btn--primary" }, d.kind === "payment" ? "Review payment" : "Review refund"),
      ),
    );
  } else {
    const said =
      d.kind === "payment"
        ? describeManualPayment({ orderLabel: label, amount: d.amount, outstanding: d.limit, currency, method: d.method, reference: d.reference.trim() || null })
        : describeRefund({ orderLabel: label, amount: d.amount, refundable: d.limit, currency, reason: d.reason.trim(), payments: d.payments });
    content = h(
      "div",
      { class: "form" },
      h("p", { id: "money-question", class: "dialog__question", tabindex: "-1" }, said.question),
      h("p", { id: "money-detail", class: "muted" }, said.detail),
      errorBox,
      h(
        "div",
        { class: "dialog__actions" },
        h("button", { type: "button", class: "btn btn--ghost", disabled: d.busy, onclick: () => closeMoneyDialog() }, "Cancel"),
        h(
          "button",
          {
            type: "button",
            class: "btn btn--secondary",
            disabled: d.busy,
            onclick: () => {
              d.step = "edit";
              d.error = null;
              renderDialog();
              focusDialog();
            },
          },
          "Back",
        ),
        h(
          "button",
          { id: "money-confirm", type: "button", class: `btn ${d.kind === "refund" ? "btn--danger" : "btn--primary"}`, disabled: d.busy, onclick: () => confirmMoney() },
          d.busy ? "Sending…" : d.kind === "payment" ? `Record ${formatMoney(d.amount, currency)}` : `Refund ${formatMoney(d.amount, currency)}`,
        ),
      ),
    );
  }
  el.replaceChildren(h("h2", { id: "money-title", class: "card__title" }, title), content);
  el.dataset.step = d.step;
  el.dataset.kind = d.kind;
}

/**
 * The money part of a card: what is paid, refunded and owed, and the buttons that change it.
 * @param {Order} order
 */
function renderMoney(order) {
  const s = summaryOf(order);
  const label = shortId(order.id);
  const busy = state.busy.has(order.id);
  const pay = canRecordPayment(order);
  const refund = s.canRefund;
  return [
    h(
      "p",
      { class: "order-card__money small", dataset: { paid: String(s.paid), refunded: String(s.refunded), outstanding: String(s.outstanding) } },
      h("span", null, "Paid ", h("strong", { class: "num" }, formatMoney(s.paid, s.currency))),
      s.refunded ? h("span", null, "Refunded ", h("strong", { class: "num" }, formatMoney(s.refunded, s.currency))) : null,
      h("span", { class: s.outstanding ? "is-owed" : null }, "Owed ", h("strong", { class: "num" }, formatMoney(s.outstanding, s.currency))),
    ),
    pay || refund
      ? h(
          "div",
          { class: "order-card__money-actions" },
          pay
            ? h("button", { type: "button", class: "btn btn--sm btn--secondary", dataset: { money: "payment" }, disabled: busy, "aria-label": `Record payment: order ${label}`, onclick: () => openMoneyDialog("payment", order.id) }, "Record payment")
            : null,
          refund
            ? h("button", { type: "button", class: "btn btn--sm btn--danger-ghost", dataset: { money: "refund" }, disabled: busy, "aria-label": `Refund: order ${label}`, onclick: () => openMoneyDialog("refund", order.id) }, "Refund")
            : null,
        )
      : null,
  ];
}

// -- data --------------------------------------------------------------------------------------

/** Keep the newest version of an order. @param {Order} order */
function mergeOrder(order) {
  const known = state.orders.get(order.id);
  if (!known || (order.version ?? 0) >= (known.version ?? 0)) {
    if (known && known.status !== order.status) flash(order.id);
    state.orders.set(order.id, order);
  }
}

/** @param {string} orderId */
function flash(orderId) {
  state.fresh.add(orderId);
  setTimeout(() => {
    state.fresh.delete(orderId);
    const card = document.querySelector(`[data-order-id="${CSS.escape(orderId)}"]`);
    card?.classList.remove("is-fresh");
  }, 2000);
}

/** @param {string} orderId */
async function refreshOrder(orderId) {
  const tokens = state.tokens;
  if (!tokens) return;
  try {
    const body = await apiRequest(location.origin, `/api/orders/${encodeURIComponent(orderId)}`, { token: await tokens.token() });
    mergeOrder(body.order);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) state.orders.delete(orderId);
  }
}

/** The store's recent orders (the live snapshot only has open ones; this fills "Completed"). */
async function loadStoreOrders() {
  const tokens = state.tokens;
  if (!tokens) return;
  try {
    const body = await apiRequest(location.origin, "/api/pos/orders?limit=100", { token: await tokens.token() });
    if (tokens !== state.tokens) return;
    for (const order of body.orders ?? []) mergeOrder(order);
  } catch (error) {
    showBanner({ title: "Could not load the store's orders", detail: describeError(error) });
  }
  renderBoard();
}

/** @param {StreamEvent} event */
function onEvent(event) {
  state.received.push(event.seq);
  if (event.order) {
    const isNew = !state.orders.has(event.order.id);
    mergeOrder(event.order);
    if (isNew) {
      flash(event.order.id);
      announce(`New order ${shortId(event.order.id)}.`);
    } else if (event.source !== "pos" && event.status) {
      announce(`Order ${shortId(event.order.id)} is now ${statusLabel(event.status)}.`);
    }
  }
  renderBoard();
}

// -- sign-in -----------------------------------------------------------------------------------

/**
 * @param {string} storeId
 * @param {string} terminal
 */
async function signIn(storeId, terminal) {
  const tokens = demoTokenSource({ sub: terminal, role: "pos", store_id: storeId });
  try {
    await tokens.getToken();
  } catch (error) {
    showBanner({ title: "Could not open the board", detail: describeError(error) });
    return;
  }
  hideBanner();
  Object.assign(state, { storeId, terminal, tokens });
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ storeId, terminal }));
  $("who-store").textContent = storeName(storeId);
  $("who-name").textContent = terminal;
  $("who").hidden = false;
  $("signin").hidden = true;
  $("board-wrap").hidden = false;
  renderBoard();
  state.client = connect({
    baseUrl: location.origin,
    getToken: tokens.getToken,
    backoffMaxMs: 8000,
    onStatus: connectionStatusHandler(renderStreamInfo),
    onSnapshot: (orders, info) => {
      for (const order of orders) mergeOrder(order);
      renderBoard();
      // The snapshot holds open orders only: anything we still show as open that it lacks has
      // moved on (or is older than the snapshot's limit); the store list settles it.
      if (info.reason !== "restore") loadStoreOrders();
    },
    onEvent,
  });
}

async function signOut() {
  closeMoneyDialog();
  const client = state.client;
  state.client = null;
  await client?.stop();
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { storeId: null, terminal: null, tokens: null, received: [] });
  state.orders.clear();
  renderConnection($("conn"), { state: "idle" });
  $("who").hidden = true;
  $("board-wrap").hidden = true;
  $("signin").hidden = false;
  hideBanner();
  /** @type {HTMLSelectElement} */ ($("signin-store")).focus();
}

// -- rendering ---------------------------------------------------------------------------------

function renderStreamInfo() {
  const client = state.client;
  $("stream-info").textContent = client && client.stream ? `${client.stream} · seq ${client.lastSeq}` : "";
}

function renderBoard() {
  const board = $("board");
  // Re-rendering replaces the cards: keep keyboard focus on the same order (and button).
  const active = document.activeElement;
  const focusOrder = active instanceof HTMLElement && board.contains(active) ? active.closest("[data-order-id]") : null;
  const focusKey = focusOrder instanceof HTMLElement ? { orderId: focusOrder.dataset.orderId ?? "", to: active instanceof HTMLElement ? active.dataset.to : undefined } : null;
  const all = [...state.orders.values()].filter((o) => o.store_id === state.storeId);
  const open = all.filter((o) => !isTerminal(o.status));
  $("board-summary").textContent = `${open.length} open order${open.length === 1 ? "" : "s"}`;
  board.replaceChildren(
    ...COLUMNS.map((column) => {
      let orders = all.filter((o) => column.statuses.includes(o.status));
      if (column.id === "DONE") {
        orders = orders.sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at))).slice(0, DONE_LIMIT);
      } else {
        orders = orders.sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
      }
      const titleId = `col-${column.id}`;
      return h(
        "section",
        { class: "column", dataset: { column: column.id }, "aria-labelledby": titleId },
        h("h2", { id: titleId, class: "column__title" }, h("span", null, column.title), h("span", { class: "count", "aria-label": `${orders.length} orders` }, String(orders.length))),
        orders.length
          ? h("ul", { class: "column__list" }, ...orders.map((order) => h("li", null, renderCard(order))))
          : h("p", { class: "column__empty" }, column.id === "DONE" ? "Nothing completed yet" : "No orders"),
      );
    }),
  );
  if (focusKey) restoreFocus(board, focusKey.orderId, focusKey.to);
  renderStreamInfo();
}

/**
 * @param {HTMLElement} board
 * @param {string} orderId
 * @param {string|undefined} to
 */
function restoreFocus(board, orderId, to) {
  const card = board.querySelector(`[data-order-id="${CSS.escape(orderId)}"]`);
  if (!(card instanceof HTMLElement)) return;
  // Only the very same button: moving focus to the next action invites a double advance.
  const button = to ? card.querySelector(`button[data-to="${CSS.escape(to)}"]`) : null;
  if (button instanceof HTMLElement) {
    button.focus();
  } else {
    card.tabIndex = -1;
    card.focus();
  }
}

/** @param {Order} order */
function renderCard(order) {
  const busy = state.busy.has(order.id);
  const moves = allowedNext(order.status, "pos");
  const forward = moves.filter((to) => to !== "CANCELLED");
  const label = shortId(order.id);
  return h(
    "article",
    {
      class: `order-card${state.fresh.has(order.id) ? " is-fresh" : ""}`,
      dataset: { orderId: order.id, status: order.status },
      "aria-label": `Order ${label}, ${statusLabel(order.status)}`,
      "aria-busy": busy ? "true" : null,
    },
    h(
      "header",
      { class: "order-card__head" },
      h("span", { class: "order-card__id mono" }, label),
      h("time", { class: "order-card__time muted", datetime: order.created_at ?? "", title: formatTime(order.created_at) }, timeAgo(order.created_at)),
    ),
    h("p", { class: "order-card__customer" }, order.customer_id),
    h("ul", { class: "order-card__items" }, ...order.items.map((item) => h("li", null, h("span", { class: "qty-badge" }, `${item.quantity}×`), ` ${item.name}`))),
    h(
      "p",
      { class: "order-card__foot" },
      h("span", { class: "num" }, formatMoney(order.amount, order.currency)),
      h("span", { class: "chip" }, order.payment_method === "cash" ? "Cash" : `Online · ${PAYMENT_CHIPS[order.payment_status] ?? order.payment_status.toLowerCase()}`),
      isTerminal(order.status) ? h("span", { class: "pill", dataset: { status: order.status } }, statusLabel(order.status)) : null,
    ),
    ...renderMoney(order),
    moves.length
      ? h(
          "div",
          { class: "order-card__actions" },
          ...moves.map((to) =>
            h(
              "button",
              {
                type: "button",
                class: `btn btn--sm ${to === "CANCELLED" ? "btn--danger-ghost" : to === forward[0] ? "btn--primary" : "btn--secondary"}`,
                dataset: { to },
                disabled: busy,
                "aria-label": `${actionLabel(order.status, to)}: order ${label}`,
                onclick: () => requestStatus(order.id, to),
              },
              actionLabel(order.status, to),
            ),
          ),
        )
      : null,
  );
}

// -- start -------------------------------------------------------------------------------------

function init() {
  const select = /** @type {HTMLSelectElement} */ ($("signin-store"));
  select.replaceChildren(...STORES.map((s) => h("option", { value: s.id }, `${s.name} (${s.id})`)));
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("signin-name"));
    const terminal = input.value.trim();
    if (!terminal) {
      input.setAttribute("aria-invalid", "true");
      showBanner({ title: "Please name this terminal", detail: "For example till-1." });
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    const button = /** @type {HTMLButtonElement} */ ($("signin-submit"));
    button.disabled = true;
    try {
      await signIn(select.value, terminal);
    } finally {
      button.disabled = false;
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  // Escape closes a modal dialog natively; forget what it held, so nothing is sent later.
  dialogEl().addEventListener("cancel", (event) => {
    event.preventDefault();
    if (!dialog?.busy) closeMoneyDialog();
  });
  // Ages on the cards ("3 min ago") tick along.
  setInterval(() => {
    if (state.storeId && !state.busy.size) renderBoard();
  }, 30000);
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      const { storeId, terminal } = JSON.parse(saved);
      if (typeof storeId === "string" && typeof terminal === "string") {
        signIn(storeId, terminal);
        return;
      }
    } catch {
      sessionStorage.removeItem(SESSION_KEY);
    }
  }
}

init();
