// The pure amount helpers (no server): formatting and parsing minor units per ISO 4217 exponent.
// Run: cd client-demo && node --test test/

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { ISO_EXPONENTS, currencyExponent, describeManualPayment, describeRefund, formatMinor, minorToDecimal, moneyFromNote, parseAmount } from "../money.js";
import { receiptDocument } from "../ui.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

describe("currencyExponent", () => {
  test("two decimals unless ISO 4217 says otherwise", () => {
    assert.equal(currencyExponent("INR"), 2);
    assert.equal(currencyExponent("usd"), 2);
    assert.equal(currencyExponent("JPY"), 0);
    assert.equal(currencyExponent("KRW"), 0);
    assert.equal(currencyExponent("KWD"), 3);
    assert.equal(currencyExponent("CLF"), 4);
  });

  test("the table mirrors gateways/currency.py exactly", () => {
    const source = readFileSync(join(ROOT, "gateways/currency.py"), "utf8");
    const table = source.slice(source.indexOf("ISO_EXPONENTS"), source.indexOf("# fmt: skip"));
    /** @type {Record<string, number>} */
    const python = {};
    // dict.fromkeys([...], N) blocks, then "CODE": N entries.
    for (const block of table.matchAll(/dict\.fromkeys\(\s*\[([^\]]*)\],\s*(\d+)\s*,?\s*\)/g)) {
      for (const code of block[1].matchAll(/"([A-Z]{3})"/g)) python[code[1]] = Number(block[2]);
    }
    for (const entry of table.matchAll(/^\s*"([A-Z]{3})":\s*(\d+)/gm)) python[entry[1]] = Number(entry[2]);
    assert.ok(Object.keys(python).length > 20, "parsed the Python table");
    assert.deepEqual({ ...ISO_EXPONENTS }, python);
  });
});

describe("minorToDecimal", () => {
  test("exact, per exponent", () => {
    assert.equal(minorToDecimal(1250, "INR"), "12.50");
    assert.equal(minorToDecimal(5, "INR"), "0.05");
    assert.equal(minorToDecimal(0, "INR"), "0.00");
    assert.equal(minorToDecimal(-5, "USD"), "-0.05");
    assert.equal(minorToDecimal(500, "JPY"), "500");
    assert.equal(minorToDecimal(1234, "KWD"), "1.234");
    assert.equal(minorToDecimal(7, "KWD"), "0.007");
    assert.equal(minorToDecimal(12345, "CLF"), "1.2345");
    // Past 2**53 / 100 dividing would round; string arithmetic does not.
    assert.equal(minorToDecimal(9007199254740991, "INR"), "90071992547409.91");
  });

  test("refuses a non-integer", () => {
    assert.throws(() => minorToDecimal(12.5, "INR"), RangeError);
  });
});

describe("formatMinor", () => {
  test("the currency's own number of decimals", () => {
    assert.equal(formatMinor(1250, "INR"), "₹12.50");
    assert.equal(formatMinor(28000, "INR"), "₹280.00");
    assert.equal(formatMinor(12345678, "INR"), "₹1,23,456.78");
    assert.equal(formatMinor(500, "JPY", "en-US"), "¥500");
    assert.equal(formatMinor(1234, "KWD", "en-US"), "KWD\u00a01.234");
    assert.equal(formatMinor(1999, "USD", "en-US"), "$19.99");
    assert.equal(formatMinor(0, "JPY", "en-US"), "¥0");
  });

  test("an unknown currency code falls back to plain digits", () => {
    assert.equal(formatMinor(1250, "not-a-code"), "12.50 not-a-code");
  });
});

describe("parseAmount", () => {
  test("what people type, into minor units", () => {
    assert.deepEqual(parseAmount("12.50", "INR"), { ok: true, minor: 1250 });
    assert.deepEqual(parseAmount("12.5", "INR"), { ok: true, minor: 1250 });
    assert.deepEqual(parseAmount("12", "INR"), { ok: true, minor: 1200 });
    assert.deepEqual(parseAmount(".5", "INR"), { ok: true, minor: 50 });
    assert.deepEqual(parseAmount(" ₹1,200.00 ", "INR"), { ok: true, minor: 120000 });
    assert.deepEqual(parseAmount("500", "JPY"), { ok: true, minor: 500 });
    assert.deepEqual(parseAmount("500.000", "JPY"), { ok: true, minor: 500 });
    assert.deepEqual(parseAmount("1.234", "KWD"), { ok: true, minor: 1234 });
    // 0.1 + 0.2 style float error cannot happen: 0.29 * 100 is 28.999… as a float.
    assert.deepEqual(parseAmount("0.29", "INR"), { ok: true, minor: 29 });
    assert.deepEqual(parseAmount("1.15", "USD"), { ok: true, minor: 115 });
  });

  test("round-trips every amount it formats", () => {
    for (const [minor, currency] of [[1, "INR"], [1250, "INR"], [999999, "KWD"], [7, "JPY"], [10001, "CLF"]]) {
      assert.deepEqual(parseAmount(minorToDecimal(Number(minor), String(currency)), String(currency)), { ok: true, minor });
    }
  });

  test("refuses what is not an amount, with a reason", () => {
    for (const [text, currency, why] of [
      ["", "INR", /Enter an amount/],
      ["abc", "INR", /Enter an amount/],
      ["1.2.3", "INR", /Enter an amount/],
      [".", "INR", /Enter an amount/],
      ["12.505", "INR", /2 decimal places at most/],
      ["5.5", "JPY", /no decimal places/],
      ["0", "INR", /more than zero/],
      ["0.00", "INR", /more than zero/],
      ["-5", "INR", /more than zero/],
      ["1e5", "INR", /Enter an amount/],
      ["99999999999999999999", "INR", /too large/],
    ]) {
      const result = parseAmount(String(text), String(currency));
      assert.equal(result.ok, false, `${text} should be refused`);
      assert.match(/** @type {{error: string}} */ (result).error, /** @type {RegExp} */ (why), String(text));
    }
  });
});

describe("confirmation sentences", () => {
  test("a manual payment says how much, of what, how, and what is left", () => {
    const full = describeManualPayment({ orderLabel: "#AB12CD", amount: 28000, outstanding: 28000, currency: "INR", method: "cash" });
    assert.equal(full.question, "Record ₹280.00 of ₹280.00 outstanding, paid by cash, for order #AB12CD?");
    assert.match(full.detail, /fully paid/);
    const part = describeManualPayment({ orderLabel: "#AB12CD", amount: 500, outstanding: 1200, currency: "JPY", method: "card_terminal", reference: "slip 42" });
    assert.match(part.question, /paid by the card terminal/);
    assert.match(part.detail, /^JP¥700 will still be owed\. Reference: slip 42\./);
  });

  test("a refund names where the money goes, newest payment first", () => {
    const payments = [
      { gateway: "sandbox", status: "COMPLETED", created_at: "2026-01-01T10:00:00Z" },
      { gateway: "manual", method: "cash", status: "PARTIALLY_REFUNDED", created_at: "2026-01-01T11:00:00Z" },
      { gateway: "stripe", status: "FAILED", created_at: "2026-01-01T12:00:00Z" },
    ];
    const refund = describeRefund({ orderLabel: "#X", amount: 1250, refundable: 4000, currency: "INR", reason: "cold coffee", payments });
    assert.equal(refund.question, "Refund ₹12.50 of ₹40.00 to cash and the customer's sandbox payment (newest first)?");
    assert.match(refund.detail, /^Part of the refundable amount of order #X, because: “cold coffee”\./);
    assert.match(refund.detail, /Hand the money back at the counter/);
    assert.match(refund.detail, /gateway is asked/);
    const all = describeRefund({ orderLabel: "#X", amount: 4000, refundable: 4000, currency: "INR", reason: "r", payments: payments.slice(0, 1) });
    assert.equal(all.question, "Refund ₹40.00 of ₹40.00 to the customer's sandbox payment?");
    assert.match(all.detail, /^The full refundable amount/);
    assert.doesNotMatch(all.detail, /counter/);
  });
});

describe("moneyFromNote", () => {
  test("a refund's amount and reason, a payment's or receipt's amount", () => {
    assert.deepEqual(moneyFromNote("refund.status", "refund ref_5febcd of 4000: Cold coffee: really", "INR"), { amount: 4000, currency: "INR", reason: "Cold coffee: really" });
    assert.deepEqual(moneyFromNote("payment.status", "cash payment of 28000 recorded by pos:till-2", "INR"), { amount: 28000, currency: "INR", reason: null });
    assert.deepEqual(moneyFromNote("receipt.issued", "sale receipt store-1-000001 of 28000", "JPY"), { amount: 28000, currency: "JPY", reason: null });
  });

  test("nothing from other kinds or notes without an amount", () => {
    assert.equal(moneyFromNote("order.status", "out of 3 ovens", "INR"), null);
    assert.equal(moneyFromNote("payment.status", "gateway says paid", "INR"), null);
    assert.equal(moneyFromNote("refund.status", null, "INR"), null);
  });
});

describe("receiptDocument", () => {
  test("the server's policy goes first into the head of the blob document", () => {
    const html = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>R</title></head><body>x</body></html>';
    const out = receiptDocument(html, "default-src 'none'; style-src 'unsafe-inline'");
    assert.ok(out.startsWith('<!doctype html><html lang="en"><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'"><meta charset="utf-8">'), out);
  });

  test("a strict default without a header, and a header cannot break out of the attribute", () => {
    assert.match(receiptDocument("<p>x</p>", null), /^<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"><p>x<\/p>$/);
    assert.doesNotMatch(receiptDocument("<head></head>", '"><script>alert(1)</script>'), /<script>/);
  });
});
