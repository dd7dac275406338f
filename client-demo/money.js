// @ts-check
/**
 * Amounts in integer minor units, as the API counts them: the ISO 4217 exponent of each
 * currency (mirrored from gateways/currency.py; test/money.test.mjs checks the two agree),
 * formatting for display and parsing what a person types, without floating-point money.
 */

/** Currencies whose ISO 4217 minor unit is not a hundredth (gateways/currency.py ISO_EXPONENTS). */
export const ISO_EXPONENTS = Object.freeze({
  // ISO 4217 exponent 0.
  ...Object.fromEntries(
    ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"].map((c) => [c, 0]),
  ),
  // ISO 4217 exponent 3.
  ...Object.fromEntries(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"].map((c) => [c, 3])),
  // ISO 4217 exponent 4.
  CLF: 4,
  UYW: 4,
});

/**
 * How many decimal places the currency's minor unit has (2 unless listed).
 * @param {string} currency
 * @returns {number}
 */
export function currencyExponent(currency) {
  const exponents = /** @type {Record<string, number>} */ (ISO_EXPONENTS);
  return exponents[String(currency).toUpperCase()] ?? 2;
}

/**
 * The decimal text of an amount in minor units: 1250 INR → "12.50", 500 JPY → "500",
 * 1234 KWD → "1.234", -5 USD → "-0.05". Exact (string arithmetic, no division).
 * @param {number} minor an integer
 * @param {string} currency
 * @returns {string}
 */
export function minorToDecimal(minor, currency) {
  if (!Number.isSafeInteger(minor)) throw new RangeError(`${minor} is not an integer amount in minor units`);
  const exponent = currencyExponent(currency);
  const digits = String(Math.abs(minor)).padStart(exponent + 1, "0");
  const whole = digits.slice(0, digits.length - exponent);
  const fraction = digits.slice(digits.length - exponent);
  return `${minor < 0 ? "-" : ""}${whole}${exponent ? `.${fraction}` : ""}`;
}

/**
 * An amount for people: "₹12.50", "¥500", "KWD 1.234" (the locale's symbol and grouping,
 * always the currency's own number of decimals).
 * @param {number} minor an integer in the currency's minor unit
 * @param {string} currency ISO 4217 code
 * @param {string} [locale]
 * @returns {string}
 */
export function formatMinor(minor, currency, locale = "en-IN") {
  const exponent = currencyExponent(currency);
  const decimal = minorToDecimal(minor, currency);
  try {
    const format = new Intl.NumberFormat(locale, {
      style: "currency",
      currency,
      minimumFractionDigits: exponent,
      maximumFractionDigits: exponent,
    });
    // A decimal string keeps the exact value (Intl formats strings exactly since ES2023);
    // older engines coerce it to a number, exact for any amount the API accepts.
    return format.format(/** @type {any} */ (decimal));
  } catch {
    return `${decimal} ${currency}`;
  }
}

/**
 * What a person typed ("12.5", "₹1,200.00", "500") as an integer in minor units, or an error
 * saying why not (too many decimals for the currency, not a number, not above zero).
 * @param {string} text
 * @param {string} currency
 * @returns {{ok: true, minor: number} | {ok: false, error: string}}
 */
export function parseAmount(text, currency) {
  const exponent = currencyExponent(currency);
  // Grouping commas, spaces and a leading currency sign or code are what people paste.
  const cleaned = String(text).trim().replace(/^[^\d.-]+/, "").replace(/[,\s\u00a0]/g, "");
  if (/^-\d*\.?\d/.test(cleaned)) return { ok: false, error: "The amount must be more than zero" };
  const match = /^(\d*)(?:\.(\d*))?$/.exec(cleaned);
  if (!cleaned || !match || (match[1] === "" && !match[2])) {
    return { ok: false, error: "Enter an amount, e.g. " + minorToDecimal(1250 * 10 ** Math.max(0, exponent - 2), currency) };
  }
  const whole = match[1] || "0";
  const fraction = (match[2] ?? "").replace(/0+$/, "");
  if (fraction.length > exponent) {
    return { ok: false, error: exponent ? `${currency} has ${exponent} decimal place${exponent === 1 ? "" : "s"} at most` : `${currency} has no decimal places` };
  }
  const minor = Number(whole + fraction.padEnd(exponent, "0"));
  if (!Number.isSafeInteger(minor)) return { ok: false, error: "That amount is too large" };
  if (minor <= 0) return { ok: false, error: "The amount must be more than zero" };
  return { ok: true, minor };
}

/** @type {Record<string, string>} how a manual payment's method reads in a sentence */
export const METHOD_LABELS = Object.freeze({
  cash: "cash",
  card_terminal: "the card terminal",
  bank_transfer: "bank transfer",
  other: "another way",
});

/**
 * The confirmation sentence of recording a manual payment (what will happen, in full).
 * @param {{orderLabel: string, amount: number, outstanding: number, currency: string, method: string, reference?: string|null}} what
 * @returns {{question: string, detail: string}}
 */
export function describeManualPayment({ orderLabel, amount, outstanding, currency, method, reference }) {
  const left = Math.max(outstanding - amount, 0);
  const via = METHOD_LABELS[/** @type {keyof typeof METHOD_LABELS} */ (method)] ?? method;
  return {
    question: `Record ${formatMinor(amount, currency)} of ${formatMinor(outstanding, currency)} outstanding, paid by ${via}, for order ${orderLabel}?`,
    detail:
      (left ? `${formatMinor(left, currency)} will still be owed.` : "The order will be fully paid.") +
      (reference ? ` Reference: ${reference}.` : "") +
      " It is recorded as paid at once, in your terminal's name.",
  };
}

/**
 * Where a refund goes: the order's paid payments, newest first (the order the server spreads
 * a refund in); a manual one is handed back at the counter, a gateway one is sent to it.
 * @param {Array<{gateway: string, status: string, method?: string|null, created_at?: string|null}>} payments
 * @returns {{to: string, how: string}}
 */
export function refundDestination(payments) {
  const paid = payments
    .filter((p) => p.status === "COMPLETED" || p.status === "PARTIALLY_REFUNDED")
    .sort((a, b) => String(b.created_at ?? "").localeCompare(String(a.created_at ?? "")));
  const names = [];
  let manual = false;
  let sent = false;
  for (const p of paid) {
    const name = p.gateway === "manual" ? (METHOD_LABELS[/** @type {keyof typeof METHOD_LABELS} */ (p.method ?? "other")] ?? p.method ?? "another way") : `the customer's ${p.gateway} payment`;
    if (p.gateway === "manual") manual = true;
    else sent = true;
    if (!names.includes(name)) names.push(name);
  }
  if (!names.length) return { to: "the order's payments", how: "" };
  const hows = [];
  if (manual) hows.push("Hand the money back at the counter: a payment taken in person is refunded in person, and recorded as refunded at once.");
  if (sent) hows.push("The gateway is asked to refund it; the customer sees it settle when the gateway confirms.");
  return { to: names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} (newest first)`, how: hows.join(" ") };
}

/**
 * The confirmation sentence of a refund: "Refund ₹12.50 of ₹40.00 to cash?".
 * @param {{orderLabel: string, amount: number, refundable: number, currency: string, reason: string, payments: Parameters<typeof refundDestination>[0]}} what
 * @returns {{question: string, detail: string}}
 */
export function describeRefund({ orderLabel, amount, refundable, currency, reason, payments }) {
  const { to, how } = refundDestination(payments);
  const part = amount >= refundable ? "the full" : "part of the";
  return {
    question: `Refund ${formatMinor(amount, currency)} of ${formatMinor(refundable, currency)} to ${to}?`,
    detail: `${part[0].toUpperCase()}${part.slice(1)} refundable amount of order ${orderLabel}, because: “${reason}”. ${how}`.trim(),
  };
}

/** The event kinds about money (their notes count in minor units). */
export const MONEY_EVENT_KINDS = Object.freeze(["payment.status", "refund.status", "receipt.issued"]);

/**
 * The amount (and a refund's reason) in the server's note of a money event, e.g. "refund ref_…
 * of 4000: Cold coffee", "sale receipt store-1-000001 of 28000"; null when it says neither.
 * @param {string} kind
 * @param {string|null} note
 * @param {string} currency the order's
 * @returns {{amount: number, currency: string, reason: string|null}|null}
 */
export function moneyFromNote(kind, note, currency) {
  if (!note || !MONEY_EVENT_KINDS.includes(kind)) return null;
  const refund = kind === "refund.status" ? /^refund \S+ of (\d+): ([\s\S]*)$/.exec(note) : null;
  if (refund) return { amount: Number(refund[1]), currency, reason: refund[2] };
  const other = / of (\d+)\b/.exec(note);
  return other ? { amount: Number(other[1]), currency, reason: null } : null;
}
