// The client module against the real server: `python -m server` on a temporary SQLite file.
// Run: cd client-demo && npm ci && node --test test/
//
// Every wait is bounded (waitFor's timeout, each test's timeout); the server is killed in after().

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { ApiError, CloseCode, MemoryStorage, OrderStatusClient, apiRequest, backoffDelay, decodeTokenClaims } from "../orderstatus.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const PYTHON = process.env.PYTHON ?? join(ROOT, ".venv/bin/python");
const TEST_TIMEOUT = 60_000;

let WebSocket;
try {
  ({ default: WebSocket } = await import("ws"));
} catch {
  throw new Error("the `ws` package is missing: run `npm ci` in client-demo/ first");
}

// -- the server ----------------------------------------------------------------------------------

/** @returns {Promise<number>} */
function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
      server.close(() => resolvePort(port));
    });
  });
}

/**
 * @param {() => boolean | Promise<boolean>} predicate
 * @param {string} what
 * @param {number} [timeoutMs]
 */
async function waitFor(predicate, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Server {
  /** @param {Record<string, string>} [extraEnv] */
  constructor(extraEnv = {}) {
    this.extraEnv = extraEnv;
    /** @type {import("node:child_process").ChildProcess|null} */
    this.process = null;
    this.output = "";
    this.port = 0;
    this.dir = "";
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  async init() {
    if (!existsSync(PYTHON)) throw new Error(`${PYTHON} not found: run ./scripts/setup first (or set PYTHON)`);
    this.dir = await mkdtemp(join(tmpdir(), "orderstatus-js-"));
    this.port = await freePort();
  }

  async start() {
    const env = {
      ...process.env,
      DATABASE_URL: `sqlite+aiosqlite:///${join(this.dir, "orderstatus.db")}`,
      DEMO_TOKENS: "true",
      HOST: "127.0.0.1",
      PORT: String(this.port),
      LOG_LEVEL: "WARNING",
      LOG_FORMAT: "text",
      GRACEFUL_SHUTDOWN_TIMEOUT: "3",
      ...this.extraEnv,
    };
    delete env.REDIS_URL;
    delete env.JWT_SECRET;
    delete env.JWT_PUBLIC_KEY;
    const child = spawn(PYTHON, ["-m", "server"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    this.process = child;
    const collect = (/** @type {Buffer} */ chunk) => {
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", collect);
    child.stderr?.on("data", collect);
    try {
      await waitFor(
        async () => {
          if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
          try {
            return (await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(1000) })).ok;
          } catch {
            return false;
          }
        },
        "the server's /healthz",
        30_000,
      );
    } catch (error) {
      throw new Error(`${/** @type {Error} */ (error).message}\n--- server output ---\n${this.output}`);
    }
  }

  /** SIGTERM (the hub closes sockets with 1012), then SIGKILL if it will not go. */
  async stop() {
    const child = this.process;
    this.process = null;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  }

  async cleanup() {
    await this.stop();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }

  /**
   * Run SQL on the server's SQLite file from another process (as an operator's restore would).
   * @param {string} sql
   */
  sql(sql) {
    const script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\nc.executescript(sys.argv[2])\nc.commit()";
    const result = spawnSync(PYTHON, ["-c", script, join(this.dir, "orderstatus.db"), sql], { encoding: "utf8", timeout: 30_000 });
    if (result.status !== 0) throw new Error(`sql failed: ${result.stderr}`);
  }
}

const server = new Server();

before(async () => {
  await server.init();
  await server.start();
});

after(async () => {
  await server.cleanup();
});

// -- REST helpers ---------------------------------------------------------------------------------

/**
 * @param {string} path
 * @param {{method?: string, token?: string, body?: unknown, base?: string}} [options]
 */
async function api(path, { method = "GET", token, body, base = server.base } = {}) {
  const response = await fetch(base + path, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

/**
 * @param {string} sub
 * @param {{role?: string, store_id?: string, ttl?: number}} [extra]
 * @param {string} [base]
 * @returns {Promise<{token: string, expires_at: number}>}
 */
function mint(sub, extra = {}, base = server.base) {
  return api("/demo/token", { method: "POST", body: { sub, role: "customer", ...extra }, base });
}

let userCounter = 0;
/**
 * A customer of their own (a fresh stream) and the store terminal, for one test.
 * @param {string} [base]  the server (default: the shared one)
 */
async function actors(base = server.base) {
  userCounter += 1;
  const sub = `js-${process.pid}-${userCounter}`;
  const store = `store-js-${userCounter}`;
  return {
    sub,
    store,
    stream: `customer:${sub}`,
    /** @param {Record<string, unknown>} [extra] */
    base,
    mint: (extra) => mint(sub, extra, base),
    async customerToken() {
      return (await mint(sub, {}, base)).token;
    },
    async posToken() {
      return (await mint(`till-${userCounter}`, { role: "pos", store_id: store }, base)).token;
    },
    async placeOrder() {
      const body = await api("/api/orders", {
        method: "POST",
        base,
        token: await this.customerToken(),
        body: { store_id: store, currency: "INR", payment_method: "cash", items: [{ sku: "dosa", name: "Masala dosa", quantity: 1, unit_price: 12000 }] },
      });
      return body.order.id;
    },
    /** @param {string} orderId @param {string} status */
    async move(orderId, status) {
      return api(`/api/pos/orders/${orderId}/status`, { method: "POST", base, token: await this.posToken(), body: { status } });
    },
  };
}

// -- the client under test --------------------------------------------------------------------------

/**
 * A client recording everything it reports, stopped after the test.
 * @param {import("node:test").TestContext} t
 * @param {Partial<import("../orderstatus.js").ClientOptions> & {sub: string, base?: string}} options
 */
function recordingClient(t, { sub, base = server.base, ...options }) {
  const record = {
    /** @type {any[]} */ events: [],
    /** @type {{orders: any[], info: any}[]} */ snapshots: [],
    /** @type {any[]} */ statuses: [],
    /** @type {boolean[]} */ tokenCalls: [],
    /** @type {string[]} */ urls: [],
  };
  const client = new OrderStatusClient({
    baseUrl: base,
    WebSocket,
    storage: new MemoryStorage(),
    backoffBaseMs: 100,
    backoffMaxMs: 1000,
    getToken: async ({ refresh }) => {
      record.tokenCalls.push(refresh);
      return mint(sub, {}, base);
    },
    onEvent: (event) => record.events.push(event),
    onSnapshot: (orders, info) => record.snapshots.push({ orders, info }),
    onStatus: (status) => record.statuses.push(status),
    ...options,
  });
  t.after(() => client.stop());
  return { client, record };
}

/**
 * A WebSocket class that records each URL it is opened with and lets a test hold new
 * connections (they wait, like on a slow network) and tamper with incoming frames.
 */
function controllableWebSocket() {
  const control = {
    /** @type {string[]} */ urls: [],
    /** @type {Promise<void>|null} */ hold: null,
    /** @type {(data: string) => string[]} every incoming frame goes through this */
    tamper: (data) => [data],
  };
  class Controlled {
    /** @param {string} url */
    constructor(url) {
      control.urls.push(url);
      this.readyState = 0;
      this.closed = false;
      /** @type {any} */ this.inner = null;
      /** @type {any} */ this.onopen = null;
      /** @type {any} */ this.onmessage = null;
      /** @type {any} */ this.onclose = null;
      /** @type {any} */ this.onerror = null;
      const open = () => {
        if (this.closed) return;
        const inner = new WebSocket(url);
        this.inner = inner;
        inner.onopen = (/** @type {any} */ e) => {
          this.readyState = 1;
          this.onopen?.(e);
        };
        inner.onmessage = (/** @type {any} */ e) => {
          for (const data of control.tamper(String(e.data))) this.onmessage?.({ data });
        };
        inner.onerror = (/** @type {any} */ e) => this.onerror?.(e);
        inner.onclose = (/** @type {any} */ e) => {
          this.readyState = 3;
          this.onclose?.({ code: e.code, reason: e.reason });
        };
      };
      if (control.hold) control.hold.then(open);
      else open();
    }
    /** @param {string} data */
    send(data) {
      this.inner?.send(data);
    }
    /** @param {number} [code] @param {string} [reason] */
    close(code, reason) {
      this.closed = true;
      if (this.inner) this.inner.close(code, reason);
      else this.readyState = 3;
    }
    terminate() {
      this.inner?.terminate();
    }
  }
  return { WebSocketClass: Controlled, control };
}

/** @param {any[]} events */
const seqs = (events) => events.map((e) => e.seq);

// -- tests ------------------------------------------------------------------------------------------

describe("pure helpers", () => {
  test("backoff grows exponentially, is capped, and is jittered within [d/2, d]", () => {
    assert.equal(backoffDelay(1, 500, 15000, () => 0), 250);
    assert.equal(backoffDelay(1, 500, 15000, () => 1), 500);
    assert.equal(backoffDelay(3, 500, 15000, () => 1), 2000);
    assert.equal(backoffDelay(20, 500, 15000, () => 1), 15000);
    assert.equal(backoffDelay(20, 500, 15000, () => 0), 7500);
  });

  test("token claims decode without verification", () => {
    const payload = Buffer.from(JSON.stringify({ sub: "ünï", exp: 42 })).toString("base64url");
    assert.deepEqual(decodeTokenClaims(`x.${payload}.y`), { sub: "ünï", exp: 42 });
    assert.equal(decodeTokenClaims("not-a-jwt"), null);
  });
});

describe("the client against the real server", { timeout: 300_000 }, () => {
  test("receives live events in order and persists the last seq and epoch", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const storage = new MemoryStorage();
    const { client, record } = recordingClient(t, { sub: who.sub, storage });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    assert.equal(record.snapshots[0].info.reason, "hello");
    assert.deepEqual(record.snapshots[0].orders, []);

    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    await waitFor(() => record.events.length === 3, "three events");

    assert.deepEqual(seqs(record.events), [1, 2, 3]);
    assert.deepEqual(record.events.map((e) => e.status), ["CONFIRMED", "PREPARING", "READY"]);
    assert.equal(client.getOrder(orderId)?.status, "READY");
    const saved = JSON.parse(storage.getItem(`orderstatus:v1:${who.stream}`) ?? "null");
    assert.equal(saved.seq, 3);
    assert.equal(saved.epoch, client.epoch);
    assert.ok(saved.epoch);
    assert.deepEqual(saved.orders.map((/** @type {any} */ o) => [o.id, o.status]), [[orderId, "READY"]]);
  });

  test("a new client with the saved position resumes with since: exactly the missed events, no snapshot", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const storage = new MemoryStorage();
    const first = recordingClient(t, { sub: who.sub, storage });
    first.client.start();
    await waitFor(() => first.client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await waitFor(() => first.record.events.length === 1, "the first event");
    await first.client.stop();

    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");

    const { WebSocketClass, control } = controllableWebSocket();
    const second = recordingClient(t, { sub: who.sub, storage, WebSocket: WebSocketClass });
    second.client.start();
    await waitFor(() => second.record.events.length === 2, "the two missed events");
    assert.equal(new URL(control.urls[0]).searchParams.get("since"), "1");
    assert.equal(new URL(control.urls[0]).searchParams.get("epoch"), first.client.epoch);
    assert.deepEqual(second.record.snapshots.map((s) => s.info.reason), ["restore"]);
    assert.deepEqual(second.record.snapshots[0].orders.map((/** @type {any} */ o) => o.id), [orderId]);
    assert.deepEqual(seqs(second.record.events), [2, 3]);
    assert.equal(second.client.getOrder(orderId)?.status, "READY");
  });

  test("after the socket is killed it reconnects and resumes with since: nothing lost, nothing doubled", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { WebSocketClass, control } = controllableWebSocket();
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: WebSocketClass });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await waitFor(() => record.events.length === 1, "the first event");

    // Hold the reconnect until the events below are committed, so they must come by replay.
    /** @type {() => void} */
    let release = () => {};
    control.hold = new Promise((r) => {
      release = r;
    });
    client.socket.terminate();
    await waitFor(() => client.status.state === "reconnecting", "reconnecting");
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    await waitFor(() => control.urls.length === 2, "a reconnect attempt");
    control.hold = null;
    release();

    await waitFor(() => record.events.length === 3, "the missed events");
    await who.move(orderId, "DELIVERED");
    await waitFor(() => record.events.length === 4, "the live event after the resume");
    // A sentinel instead of a silence window: everything before it is the complete set.
    const sentinel = await who.placeOrder();
    await waitFor(() => record.events.some((e) => e.order_id === sentinel), "the sentinel");
    assert.deepEqual(seqs(record.events), [1, 2, 3, 4, 5]);
    assert.equal(new URL(control.urls[1]).searchParams.get("since"), "1");
    assert.equal(client.status.state, "live");
    assert.equal(client.stats.duplicates, 0);
  });

  test("a server restart (close 1012) is survived: new token, resume, the events made meanwhile", { timeout: 90_000 }, async (t) => {
    const who = await actors();
    const { WebSocketClass, control } = controllableWebSocket();
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: WebSocketClass, maxWsFailures: 100 });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await waitFor(() => record.events.length === 1, "the first event");

    /** @type {() => void} */
    let release = () => {};
    control.hold = new Promise((r) => {
      release = r;
    });
    await server.stop();
    await waitFor(() => record.statuses.some((s) => s.code === CloseCode.SERVICE_RESTART), "a 1012 close", 15_000);
    await server.start();
    // Demo tokens are signed with a per-process secret: the old token is void after a restart.
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    control.hold = null;
    release();

    await waitFor(() => record.events.length === 3, "the events made while the client was away", 30_000);
    await who.move(orderId, "DELIVERED");
    await waitFor(() => record.events.length === 4, "a live event after the restart", 15_000);
    assert.deepEqual(seqs(record.events), [1, 2, 3, 4]);
    assert.deepEqual(record.events.map((e) => e.status), ["CONFIRMED", "PREPARING", "READY", "DELIVERED"]);
    assert.ok(record.tokenCalls.includes(true), "a fresh token was asked for");
    const resumed = control.urls.map((u) => new URL(u).searchParams.get("since")).filter((s) => s !== null);
    assert.ok(resumed.includes("1"), `resumed with since=1 (${resumed})`);
    assert.equal(client.stats.resets, 0);
  });

  test("dedupe: a replayed seq is dropped, never delivered twice", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { WebSocketClass, control } = controllableWebSocket();
    /** @type {string[]} */
    const seen = [];
    // Every event frame arrives twice, and each one also brings back the one before it.
    control.tamper = (data) => {
      const message = JSON.parse(data);
      if (message.type !== "event" || message.seq > 3) return [data]; // the sentinel: as sent
      const frames = [data, data];
      if (seen.length) frames.push(seen[seen.length - 1]);
      seen.push(data);
      return frames;
    };
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: WebSocketClass });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    await waitFor(() => record.events.length === 3, "three events");
    const sentinel = await who.placeOrder();
    await waitFor(() => record.events.some((e) => e.order_id === sentinel), "the sentinel");
    assert.deepEqual(seqs(record.events), [1, 2, 3, 4]);
    assert.equal(client.stats.duplicates, 5);
  });

  test("a seq jump is repaired from /api/events before the later event is applied", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { WebSocketClass, control } = controllableWebSocket();
    let dropped = 0;
    control.tamper = (data) => {
      const message = JSON.parse(data);
      if (message.type === "event" && message.seq === 2 && !dropped) {
        dropped += 1;
        return [];
      }
      return [data];
    };
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: WebSocketClass });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await waitFor(() => record.events.length === 1, "the first event");
    await who.move(orderId, "PREPARING"); // seq 2: lost on the way
    await who.move(orderId, "READY"); // seq 3: reveals the gap
    await waitFor(() => record.events.length === 3, "the repaired sequence");
    assert.equal(dropped, 1);
    assert.deepEqual(seqs(record.events), [1, 2, 3]);
    assert.equal(client.stats.gapsRepaired, 1);
    assert.equal(control.urls.length, 1, "repaired without reconnecting");
  });

  test("a pong ahead of the last seq on a quiet stream triggers a catch-up", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { WebSocketClass, control } = controllableWebSocket();
    control.tamper = (data) => (JSON.parse(data).seq === 2 ? [] : [data]);
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: WebSocketClass, pingIntervalMs: 200, behindGraceMs: 200 });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING"); // the last event, and it is lost: nothing reveals the gap but a pong
    await waitFor(() => record.events.length === 2, "the lost event, caught up");
    assert.deepEqual(seqs(record.events), [1, 2]);
    assert.equal(client.stats.gapsRepaired, 1);
  });

  test("reset: an unknown epoch gets a fresh snapshot that replaces the state", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    const storage = new MemoryStorage();
    const ghost = { id: "ord_ghost", status: "READY", created_at: "2020-01-01T00:00:00Z", version: 9 };
    storage.setItem(`orderstatus:v1:${who.stream}`, JSON.stringify({ v: 1, epoch: "not-the-epoch", seq: 1, orders: [ghost] }));
    const { client, record } = recordingClient(t, { sub: who.sub, storage });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    assert.deepEqual(record.snapshots.map((s) => s.info.reason), ["restore", "reset"]);
    assert.deepEqual(record.snapshots[1].orders.map((/** @type {any} */ o) => [o.id, o.status]), [[orderId, "PREPARING"]]);
    assert.equal(client.getOrder("ord_ghost"), null);
    assert.equal(client.lastSeq, 2);
    assert.notEqual(client.epoch, "not-the-epoch");
    assert.equal(client.stats.resets, 1);
    assert.equal(JSON.parse(storage.getItem(`orderstatus:v1:${who.stream}`) ?? "{}").epoch, client.epoch);

    await who.move(orderId, "READY");
    await waitFor(() => record.events.length === 1, "a live event after the reset");
    assert.equal(record.events[0].seq, 3);
  });

  test("a position past the head also resets", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    await who.placeOrder();
    const probe = recordingClient(t, { sub: who.sub });
    probe.client.start();
    await waitFor(() => probe.client.status.state === "live", "live");
    const epoch = probe.client.epoch;
    await probe.client.stop();
    const storage = new MemoryStorage();
    storage.setItem(`orderstatus:v1:${who.stream}`, JSON.stringify({ v: 1, epoch, seq: 99, orders: [] }));
    const { client, record } = recordingClient(t, { sub: who.sub, storage });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    assert.equal(record.snapshots.at(-1)?.info.reason, "reset");
    assert.equal(client.lastSeq, 1);
  });

  test("long-poll: with no WebSocket at all, events still arrive in order", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const earlier = await who.placeOrder(); // before the client exists: comes with the bootstrap
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: null, longPollWaitS: 5 });
    client.start();
    await waitFor(() => client.status.state === "polling", "polling");
    assert.equal(client.status.transport, "longpoll");
    assert.equal(record.snapshots[0].info.reason, "bootstrap");
    assert.deepEqual(record.snapshots[0].orders.map((/** @type {any} */ o) => o.id), [earlier]);
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    await waitFor(() => record.events.length === 3, "three events by long-poll");
    assert.deepEqual(seqs(record.events), [2, 3, 4]);
    assert.equal(client.getOrder(orderId)?.status, "READY");
  });

  test("long-poll fallback: a WebSocket that keeps failing hands over to long-polling", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const closedPort = await freePort();
    class BrokenWebSocket extends WebSocket {
      /** @param {string} url */
      constructor(url) {
        const target = new URL(url);
        target.port = String(closedPort);
        super(target.toString());
      }
    }
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: BrokenWebSocket, maxWsFailures: 3, longPollWaitS: 5 });
    client.start();
    await waitFor(() => client.status.state === "polling", "polling after repeated failures");
    assert.equal(client.stats.connects, 3);
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    await waitFor(() => record.events.length === 2, "events by long-poll");
    assert.deepEqual(seqs(record.events), [1, 2]);
  });

  test("the token is refreshed over the open socket before it expires", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { client, record } = recordingClient(t, {
      sub: who.sub,
      getToken: async ({ refresh }) => {
        record.tokenCalls.push(refresh);
        return mint(who.sub, { ttl: 5 });
      },
    });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const socket = client.socket;
    await sleep(7000); // past the first token's expiry: without a refresh the server closes with 4401
    assert.equal(client.socket, socket, "still the same connection");
    assert.ok(record.tokenCalls.filter((r) => r).length >= 1);
    const orderId = await who.placeOrder();
    await waitFor(() => record.events.length === 1, "an event on the refreshed connection");
    assert.equal(record.events[0].order_id, orderId);
    assert.ok(!record.statuses.some((s) => s.code === CloseCode.UNAUTHENTICATED));
  });

  test("4401 (token expired) gets a new token and resumes", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { client, record } = recordingClient(t, {
      sub: who.sub,
      autoRefresh: false,
      getToken: async ({ refresh }) => {
        record.tokenCalls.push(refresh);
        return mint(who.sub, { ttl: refresh ? 3600 : 5 });
      },
    });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    const orderId = await who.placeOrder();
    await waitFor(() => record.events.length === 1, "the first event");
    await waitFor(() => record.statuses.some((s) => s.code === CloseCode.UNAUTHENTICATED), "a 4401 close", 15_000);
    await waitFor(() => client.status.state === "live", "live again");
    await who.move(orderId, "PREPARING");
    await waitFor(() => record.events.length === 2, "an event after the new token");
    assert.deepEqual(seqs(record.events), [1, 2]);
    assert.deepEqual(record.tokenCalls.slice(0, 2), [false, true]);
  });

  test("4403 (another identity's token) stops with a visible error", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const { client } = recordingClient(t, {
      sub: who.sub,
      getToken: async ({ refresh }) => mint(refresh ? `${who.sub}-someone-else` : who.sub),
    });
    client.start();
    await waitFor(() => client.status.state === "live", "live");
    await client.refreshToken();
    await waitFor(() => client.status.state === "stopped", "stopped");
    assert.equal(client.status.code, CloseCode.FORBIDDEN);
    assert.match(client.status.error ?? "", /4403/);
    // No reconnect after 4403, judged without a silence window: the main loop has ended by
    // itself (a loop that went on would stay running), so nothing is left that could reconnect.
    await waitFor(() => !client._running, "the client's main loop to end");
    assert.equal(client.status.state, "stopped");
    assert.equal(client.stats.connects, 1, "no reconnect after 4403");
  });
});

describe("POST retries with an Idempotency-Key", { timeout: 120_000 }, () => {
  /**
   * A fetch that lets the request reach the server, then loses its answer `lose` times
   * (the network dropped it); records each request's key and each answer's replay header.
   * @param {number} lose
   */
  function losingFetch(lose) {
    const seen = /** @type {{key: string|null, replayed: string|null, lost: boolean}[]} */ ([]);
    /** @type {typeof fetch} */
    const impl = async (input, init) => {
      const response = await fetch(input, init);
      const headers = /** @type {Record<string, string>} */ (init?.headers ?? {});
      const entry = { key: headers["Idempotency-Key"] ?? null, replayed: response.headers.get("idempotent-replayed"), lost: seen.filter((e) => e.lost).length < lose };
      seen.push(entry);
      if (entry.lost) {
        await response.text();
        throw new TypeError("fetch failed: the answer was lost");
      }
      return response;
    };
    return { impl, seen };
  }

  const newOrder = (/** @type {string} */ store) => ({ store_id: store, currency: "INR", payment_method: "cash", items: [{ sku: "dosa", name: "Masala dosa", quantity: 1, unit_price: 12000 }] });

  test("a POST whose answer was lost is sent again with the same key and makes one order", { timeout: TEST_TIMEOUT }, async () => {
    const who = await actors();
    const token = await who.customerToken();
    const { impl, seen } = losingFetch(2);
    const body = await apiRequest(server.base, "/api/orders", { method: "POST", token, body: newOrder(who.store), fetch: impl, retryDelayMs: 10 });
    assert.equal(seen.length, 3);
    assert.ok(seen[0].key && seen[0].key.length <= 255);
    assert.deepEqual(seen.map((e) => e.key), [seen[0].key, seen[0].key, seen[0].key]);
    // The first attempt ran; the retries were answered from the stored answer.
    assert.deepEqual(seen.map((e) => e.replayed), [null, "true", "true"]);
    const mine = await api("/api/orders", { token });
    assert.deepEqual(mine.orders.map((/** @type {any} */ o) => o.id), [body.order.id]);
  });

  test("two calls are two user actions: two keys, two orders", { timeout: TEST_TIMEOUT }, async () => {
    const who = await actors();
    const token = await who.customerToken();
    const { impl, seen } = losingFetch(0);
    for (let i = 0; i < 2; i += 1) await apiRequest(server.base, "/api/orders", { method: "POST", token, body: newOrder(who.store), fetch: impl });
    assert.notEqual(seen[0].key, seen[1].key);
    assert.equal((await api("/api/orders", { token })).orders.length, 2);
  });

  test("an error answer is not retried, and a GET carries no key", { timeout: TEST_TIMEOUT }, async () => {
    const who = await actors();
    const token = await who.customerToken();
    const { impl, seen } = losingFetch(0);
    await assert.rejects(
      apiRequest(server.base, "/api/orders", { method: "POST", token, body: { ...newOrder(who.store), items: [] }, fetch: impl, retryDelayMs: 10 }),
      (error) => error instanceof ApiError && error.status === 422,
    );
    assert.equal(seen.length, 1);
    await apiRequest(server.base, "/api/orders", { token, fetch: impl });
    assert.equal(seen[1].key, null);
  });

  test("after the retries are spent the network error reaches the caller", { timeout: TEST_TIMEOUT }, async () => {
    const who = await actors();
    const token = await who.customerToken();
    const { impl, seen } = losingFetch(10);
    await assert.rejects(
      apiRequest(server.base, "/api/orders", { method: "POST", token, body: newOrder(who.store), fetch: impl, retries: 2, retryDelayMs: 10 }),
      TypeError,
    );
    assert.equal(seen.length, 3);
    assert.equal((await api("/api/orders", { token })).orders.length, 1);
  });
});

describe("snapshots, restores and the long-poll start", { timeout: 300_000 }, () => {
  /** A second server whose snapshots hold at most two orders. */
  const small = new Server({ SNAPSHOT_MAX_ORDERS: "2" });
  before(async () => {
    await small.init();
    await small.start();
  });
  after(async () => {
    await small.cleanup();
  });

  /**
   * A fetch that records every URL it is asked for.
   * @param {string[]} urls
   * @returns {typeof fetch}
   */
  const recordingFetch = (urls) => (input, init) => {
    urls.push(String(input));
    return fetch(input, init);
  };

  for (const transport of /** @type {const} */ (["websocket", "longpoll"])) {
    test(`a truncated snapshot (${transport}) is completed from GET /api/orders`, { timeout: TEST_TIMEOUT }, async (t) => {
      const who = await actors(small.base);
      const open = [];
      for (let i = 0; i < 4; i += 1) open.push(await who.placeOrder());
      const done = await who.placeOrder();
      for (const status of ["PREPARING", "READY", "DELIVERED"]) await who.move(done, status);
      const newest = await who.placeOrder();
      /** @type {string[]} */
      const urls = [];
      const { client, record } = recordingClient(t, { sub: who.sub, base: small.base, transport, fetch: recordingFetch(urls), longPollWaitS: 2 });
      client.start();
      await waitFor(() => record.snapshots.length === 1, "the snapshot");
      // Five open orders, of which the server's snapshot held two: the rest came over REST,
      // and the delivered one (listed there too) was left out.
      assert.deepEqual(new Set(record.snapshots[0].orders.map((/** @type {any} */ o) => o.id)), new Set([newest, ...open]));
      assert.equal(client.getOrder(done), null);
      assert.ok(client.stats.snapshotPages >= 1);
      assert.ok(urls.some((u) => new URL(u).pathname === "/api/orders" && new URL(u).searchParams.get("cursor")));
      // And it is live from the snapshot's position.
      await who.move(newest, "PREPARING");
      await waitFor(() => record.events.length === 1, "a live event");
      assert.equal(record.events[0].seq, 10);
    });
  }

  test("long-poll starts from the server's snapshot, not a replay of the log from since=0", { timeout: TEST_TIMEOUT }, async (t) => {
    const who = await actors();
    const orderId = await who.placeOrder();
    await who.move(orderId, "PREPARING");
    await who.move(orderId, "READY");
    /** @type {string[]} */
    const urls = [];
    const { client, record } = recordingClient(t, { sub: who.sub, WebSocket: null, fetch: recordingFetch(urls), longPollWaitS: 2 });
    client.start();
    await waitFor(() => client.status.state === "polling", "polling");
    const events = urls.filter((u) => new URL(u).pathname === "/api/events").map((u) => new URL(u).searchParams);
    assert.equal(events[0].get("snapshot"), "true");
    assert.ok(!events.some((p) => p.get("since") === "0"), "no replay from since=0");
    assert.equal(record.snapshots[0].info.reason, "bootstrap");
    assert.deepEqual(record.snapshots[0].orders.map((/** @type {any} */ o) => [o.id, o.status]), [[orderId, "READY"]]);
    assert.equal(client.lastSeq, 3);
    assert.equal(record.events.length, 0);
    await who.move(orderId, "OUT_FOR_DELIVERY");
    await waitFor(() => record.events.length === 1, "the next event by long-poll");
    assert.equal(record.events[0].seq, 4);
  });

  for (const transport of /** @type {const} */ (["websocket", "longpoll"])) {
    test(`after a restore that reused seqs (${transport}), the saved position is reset, not resumed`, { timeout: TEST_TIMEOUT }, async (t) => {
      const who = await actors();
      const storage = new MemoryStorage();
      const first = recordingClient(t, { sub: who.sub, storage });
      first.client.start();
      await waitFor(() => first.client.status.state === "live", "live");
      const orderId = await who.placeOrder();
      await who.move(orderId, "PREPARING");
      await who.move(orderId, "READY");
      await waitFor(() => first.record.events.length === 3, "three events");
      await first.client.stop();
      const saved = JSON.parse(storage.getItem(`orderstatus:v1:${who.stream}`) ?? "null");
      assert.equal(saved.seq, 3);
      assert.equal(saved.event_id, first.record.events[2].event_id);
      // The database is restored to when the stream's head was 1 (same epoch); new events
      // take seqs 2 and 3 again.
      server.sql(`DELETE FROM stream_events WHERE stream = '${who.stream}' AND seq > 1; UPDATE streams SET head_seq = 1 WHERE name = '${who.stream}';`);
      await who.move(orderId, "OUT_FOR_DELIVERY");
      await who.move(orderId, "DELIVERED");
      /** @type {string[]} */
      const urls = [];
      const { WebSocketClass, control } = controllableWebSocket();
      const second = recordingClient(t, { sub: who.sub, storage, transport, WebSocket: WebSocketClass, fetch: recordingFetch(urls), longPollWaitS: 2 });
      second.client.start();
      await waitFor(() => second.record.snapshots.length === 2, "a reset after the restored position");
      assert.deepEqual(second.record.snapshots.map((s) => s.info.reason), ["restore", "reset"]);
      assert.equal(second.client.lastSeq, 3);
      assert.equal(second.client.getOrder(orderId), null, "delivered: no longer an open order");
      const sent = transport === "websocket" ? control.urls[0] : urls.find((u) => new URL(u).pathname === "/api/events");
      assert.equal(new URL(sent ?? "http://x/").searchParams.get("last_event_id"), String(saved.event_id));
    });
  }
});
