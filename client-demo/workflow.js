// @ts-check
/**
 * The order workflow, mirrored from orders/workflow.py (TRANSITIONS) so the pages only offer
 * moves the server will accept. The server stays the judge: a stale page still gets a 409.
 */

/** @typedef {"customer"|"pos"|"system"} Mover */

/** Every order status, in workflow order. */
export const STATUSES = Object.freeze([
  "PENDING_PAYMENT",
  "CONFIRMED",
  "PREPARING",
  "READY",
  "OUT_FOR_DELIVERY",
  "DELIVERED",
  "CANCELLED",
  "EXPIRED",
]);

/** @type {ReadonlyArray<[string, string, ReadonlyArray<Mover>]>} (from, to, who may make the move) */
export const TRANSITIONS = Object.freeze([
  ["PENDING_PAYMENT", "CONFIRMED", ["pos", "system"]],
  ["PENDING_PAYMENT", "CANCELLED", ["customer", "pos", "system"]],
  ["PENDING_PAYMENT", "EXPIRED", ["system"]],
  ["CONFIRMED", "PREPARING", ["pos", "system"]],
  ["CONFIRMED", "CANCELLED", ["customer", "pos", "system"]],
  ["PREPARING", "READY", ["pos", "system"]],
  ["PREPARING", "CANCELLED", ["pos", "system"]],
  ["READY", "OUT_FOR_DELIVERY", ["pos", "system"]],
  ["READY", "DELIVERED", ["pos", "system"]], // pickup
  ["READY", "CANCELLED", ["pos", "system"]],
  ["OUT_FOR_DELIVERY", "DELIVERED", ["pos", "system"]],
]);

/** Statuses an order never leaves. */
export const TERMINAL = Object.freeze(new Set(["DELIVERED", "CANCELLED", "EXPIRED"]));

/** @type {Readonly<Record<string, number>>} */
const RANK = Object.freeze({
  PENDING_PAYMENT: 0,
  CONFIRMED: 1,
  PREPARING: 2,
  READY: 3,
  OUT_FOR_DELIVERY: 4,
  DELIVERED: 5,
  CANCELLED: 6,
  EXPIRED: 6,
});

/** Human names of the statuses. */
export const STATUS_LABELS = Object.freeze({
  PENDING_PAYMENT: "Awaiting payment",
  CONFIRMED: "Confirmed",
  PREPARING: "Preparing",
  READY: "Ready",
  OUT_FOR_DELIVERY: "Out for delivery",
  DELIVERED: "Delivered",
  CANCELLED: "Cancelled",
  EXPIRED: "Expired",
});

/**
 * @param {string} status
 * @returns {string}
 */
export function statusLabel(status) {
  return /** @type {Record<string, string>} */ (STATUS_LABELS)[status] ?? status;
}

/**
 * The statuses `mover` may move an order in `status` to, in workflow order.
 * @param {string} status
 * @param {Mover} mover
 * @returns {string[]}
 */
export function allowedNext(status, mover) {
  return TRANSITIONS.filter(([from, , who]) => from === status && who.includes(mover))
    .map(([, to]) => to)
    .sort((a, b) => RANK[a] - RANK[b] || a.localeCompare(b));
}

/**
 * @param {string} status
 */
export function isTerminal(status) {
  return TERMINAL.has(status);
}

/**
 * The label of the button that makes a move, from the store's point of view.
 * @param {string} from
 * @param {string} to
 */
export function actionLabel(from, to) {
  if (to === "CONFIRMED") return "Mark paid";
  if (to === "PREPARING") return "Start preparing";
  if (to === "READY") return "Mark ready";
  if (to === "OUT_FOR_DELIVERY") return "Out for delivery";
  if (to === "DELIVERED") return from === "READY" ? "Picked up" : "Delivered";
  if (to === "CANCELLED") return "Cancel";
  return statusLabel(to);
}

/**
 * The steps a tracker shows for an order: online orders start by waiting for payment.
 * @param {{payment_method?: string}} order
 */
export function trackerSteps(order) {
  const steps = ["CONFIRMED", "PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"];
  return order.payment_method === "online" ? ["PENDING_PAYMENT", ...steps] : steps;
}

/**
 * Where `status` sits on the main line (CANCELLED / EXPIRED are off it).
 * @param {string} status
 */
export function rank(status) {
  return RANK[status] ?? -1;
}
