// @ts-check
/**
 * The POS board: a store's orders in columns by status, a card per order with buttons only
 * for the moves the workflow allows a terminal, and any refusal (409) shown plainly.
 */

import { ApiError, apiRequest, connect, newIdempotencyKey } from "./orderstatus.js";
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
