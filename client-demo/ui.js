// @ts-check
/**
 * Small helpers shared by the demo pages: DOM building (no innerHTML: order data is user
 * input), formatting, demo sign-in, the connection indicator and the error banner.
 */

import { formatMinor } from "./money.js";
import { ApiError, apiRequest } from "./orderstatus.js";

/** The demo's stores (any store id works on the server; these are the ones the pages offer). */
export const STORES = Object.freeze([
  { id: "store-1", name: "Indiranagar" },
  { id: "store-2", name: "Koramangala" },
  { id: "store-3", name: "HSR Layout" },
]);

/** The demo menu; prices in minor units (paise). */
export const MENU = Object.freeze([
  { sku: "masala-dosa", name: "Masala dosa", unit_price: 12000 },
  { sku: "idli-sambar", name: "Idli sambar", unit_price: 8000 },
  { sku: "paneer-wrap", name: "Paneer tikka wrap", unit_price: 16000 },
  { sku: "filter-coffee", name: "Filter coffee", unit_price: 4000 },
  { sku: "mango-lassi", name: "Mango lassi", unit_price: 9000 },
]);

export const CURRENCY = "INR";

/** @param {string} id */
export function storeName(id) {
  return STORES.find((s) => s.id === id)?.name ?? id;
}

/**
 * Build an element. `props`: attributes, plus `class`, `text`, `dataset`, and `on*` listeners.
 * @param {string} tag
 * @param {Record<string, any>|null} [props]
 * @param {...(Node|string|null|undefined|false)} children
 * @returns {HTMLElement}
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = String(value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

/**
 * Replace an element's children, skipping the null / false of conditional parts.
 * @param {Element} el
 * @param {...(Node|string|null|undefined|false)} children
 */
export function fill(el, ...children) {
  el.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false).map((c) => /** @type {Node|string} */ (c)));
}

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el;
}

/**
 * An amount in the currency's minor units, for people (its own number of decimals: money.js).
 * @param {number} minor
 * @param {string} currency
 */
export function formatMoney(minor, currency) {
  return formatMinor(minor, currency);
}

/** "#9F3A1C" from "ord_9f3a1c…": short enough to read out, long enough to tell apart. */
/** @param {string} id */
export function shortId(id) {
  return `#${id.replace(/^ord_/, "").slice(0, 6).toUpperCase()}`;
}

/** @param {string|null|undefined} iso */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** @param {string|null|undefined} iso */
export function formatDateTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

/** @param {string|null|undefined} iso */
export function timeAgo(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  return formatDateTime(iso);
}

/**
 * @param {Array<{quantity: number, name: string}>} items
 */
export function itemsSummary(items) {
  return items.map((i) => `${i.quantity}× ${i.name}`).join(", ");
}

/**
 * Mint a demo token (the embedded server's POST /demo/token).
 * @param {{sub: string, role: "customer"|"pos", store_id?: string, ttl?: number}} claims
 * @returns {Promise<{token: string, expires_at: number}>}
 */
export function mintDemoToken(claims) {
  return apiRequest(location.origin, "/demo/token", { method: "POST", body: claims });
}

/**
 * A getToken for the client: mints a fresh demo token whenever asked to refresh.
 * @param {{sub: string, role: "customer"|"pos", store_id?: string}} claims
 */
export function demoTokenSource(claims) {
  /** @type {{token: string, expires_at: number}|null} */
  let current = null;
  const source = {
    /** @param {{refresh?: boolean}} [options] */
    async getToken(options = {}) {
      if (!current || options.refresh || current.expires_at - Date.now() / 1000 < 60) {
        current = await mintDemoToken({ ...claims, ttl: 3600 });
      }
      return current;
    },
    /** The token for a REST call now. */
    async token() {
      return (await source.getToken()).token;
    },
  };
  return source;
}

const CONNECTION_TEXT = {
  idle: ["Not connected", "Sign in to receive live updates"],
  connecting: ["Connecting…", "Opening a live connection"],
  live: ["Live", "Updates arrive the moment they happen (WebSocket)"],
  reconnecting: ["Reconnecting…", "The connection dropped; catching up without losing an update"],
  polling: ["Polling", "WebSocket unavailable: checking for updates over HTTP long-polling"],
  stopped: ["Disconnected", "Not receiving updates"],
};

/**
 * Show a ConnectionStatus in the indicator (dot + label; details in the tooltip).
 * @param {HTMLElement} el
 * @param {import("./orderstatus.js").ConnectionStatus|{state: "idle"}} status
 */
export function renderConnection(el, status) {
  const state = status.state;
  const [label, detail] = CONNECTION_TEXT[state] ?? [state, ""];
  el.dataset.state = state;
  const labelEl = el.querySelector(".conn__label");
  if (labelEl && labelEl.textContent !== label) labelEl.textContent = label;
  let title = detail;
  if ("retryInMs" in status && status.retryInMs !== undefined && state === "reconnecting") {
    title += ` · next try in ${Math.max(1, Math.round(status.retryInMs / 1000))} s`;
  }
  if ("error" in status && status.error) title = status.error;
  el.title = title;
}

/**
 * Say something to screen-reader users (the announcer is an aria-live region).
 * @param {string} text
 */
/**
 * The onStatus callback both pages use: show the connection state, surface a stop, then let
 * the page refresh what it shows about its stream.
 * @param {() => void} afterwards
 * @returns {(status: {state: string, error?: string}) => void}
 */
export function connectionStatusHandler(afterwards) {
  return (status) => {
    renderConnection($("conn"), status);
    if (status.state === "stopped" && status.error) {
      showBanner({ title: "Live updates stopped", detail: status.error });
    }
    afterwards();
  };
}

export function announce(text) {
  const el = document.getElementById("announcer");
  if (!el) return;
  el.textContent = "";
  // A separate task so the same sentence twice is still announced.
  setTimeout(() => {
    el.textContent = text;
  }, 30);
}

/**
 * A plain sentence for an error from apiRequest.
 * @param {unknown} error
 */
export function describeError(error) {
  if (error instanceof ApiError) {
    return `${error.status} ${error.code}: ${error.message}`;
  }
  if (error instanceof Error) {
    return error.name === "TypeError" ? `Network error: ${error.message}. Is the server running?` : error.message;
  }
  return String(error);
}

/**
 * The page's banner: role="alert", stays until dismissed or replaced.
 * @param {{title: string, detail?: string, lines?: string[], kind?: "error"|"info"}} message
 */
export function showBanner(message) {
  const banner = $("banner");
  banner.replaceChildren(
    h(
      "div",
      { class: "banner__body" },
      h("p", { class: "banner__title", text: message.title }),
      message.detail ? h("p", { class: "banner__detail", text: message.detail }) : null,
      ...(message.lines ?? []).map((line) => h("p", { class: "banner__detail", text: line })),
    ),
    h("button", { class: "btn btn--ghost btn--sm banner__close", type: "button", "aria-label": "Dismiss message", onclick: hideBanner }, "Dismiss"),
  );
  banner.dataset.kind = message.kind ?? "error";
  banner.hidden = false;
}

export function hideBanner() {
  const banner = $("banner");
  banner.hidden = true;
  banner.replaceChildren();
}

/**
 * A status pill.
 * @param {string} status
 * @param {string} label
 */
export function statusPill(status, label) {
  return h("span", { class: "pill", dataset: { status } }, label);
}

/**
 * A receipt page to show from a blob URL. A blob document runs with this page's origin and
 * without the response's headers, so the server's Content-Security-Policy (nothing runs or
 * loads: inline styles only) goes in as a meta tag, first thing in the head.
 * @param {string} html
 * @param {string|null} policy the response's Content-Security-Policy header
 */
export function receiptDocument(html, policy) {
  const csp = (policy || "default-src 'none'; style-src 'unsafe-inline'").replace(/["<>]/g, "");
  const meta = `<meta http-equiv="Content-Security-Policy" content="${csp}">`;
  return /<head[^>]*>/i.test(html) ? html.replace(/<head[^>]*>/i, (head) => head + meta) : meta + html;
}
