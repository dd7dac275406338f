// @ts-check
/**
 * orderstatus client: one live, ordered, gap-free view of the caller's stream.
 *
 * Works in browsers and in Node 20+ (pass a WebSocket implementation, e.g. the `ws` package,
 * as the `WebSocket` option). No dependencies, no build step.
 *
 *   import { connect } from "./orderstatus.js";
 *   const client = connect({
 *     baseUrl: location.origin,
 *     getToken: async ({ refresh }) => myAuth.token({ refresh }),
 *     onSnapshot: (orders, info) => render(orders),
 *     onEvent: (event) => apply(event),
 *     onStatus: (status) => showIndicator(status.state),
 *   });
 *   // later: await client.stop();
 *
 * What it does for you (DESIGN.md §5):
 * - connects to /ws?token=…; the first message (hello) carries a snapshot of open orders; a
 *   snapshot cut at the server's bound (`truncated`) is completed from GET /api/orders?cursor=;
 * - remembers the last seq, its event id and the epoch of its stream (localStorage by default)
 *   and resumes with ?since=&epoch=&last_event_id= after any disconnect or page reload, so
 *   nothing is lost (and a log restored to an earlier point resets us instead of skipping);
 * - drops events it already has (seq <= last) and, if a seq jumps, fetches the missing range
 *   from /api/events before applying the later one, so nothing is doubled or reordered;
 * - on `reset` (its position is gone, or the log was reset) replaces its state with the snapshot;
 * - reconnects with jittered exponential backoff; pings and compares pong.head_seq with its
 *   last seq to notice a silent gap on a quiet stream;
 * - refreshes the token before it expires with {"type": "auth"} (getToken({refresh: true}));
 * - falls back to long-polling /api/events?since=&wait= when WebSocket fails repeatedly or
 *   does not exist (starting from /api/events?snapshot=true, not a replay of the whole log),
 *   and tries WebSocket again now and then;
 * - close codes: 4401 → new token, reconnect; 4403 / 4429 → stop with an error;
 *   4408 / 1012 / anything else → reconnect and resume.
 */

/**
 * @typedef {Object} OrderItem
 * @property {string} sku
 * @property {string} name
 * @property {number} quantity
 * @property {number} unit_price  minor units
 */

/**
 * @typedef {Object} Order
 * @property {string} id
 * @property {string} customer_id
 * @property {string} store_id
 * @property {string} status
 * @property {string} payment_status
 * @property {string} payment_method
 * @property {number} amount  minor units
 * @property {string} currency
 * @property {OrderItem[]} items
 * @property {boolean} needs_review
 * @property {string|null} created_at
 * @property {string|null} updated_at
 * @property {string|null} expires_at
 * @property {number} version
 * @property {PaymentSummary} [payment_summary]  from the payment and refund rows, as of this version
 */

/**
 * @typedef {Object} PaymentSummary
 * @property {number} paid  minor units
 * @property {number} refunded  minor units
 * @property {number} outstanding  minor units
 * @property {string} currency
 * @property {boolean} can_pay
 * @property {boolean} can_refund
 */

/**
 * @typedef {Object} StreamEvent
 * @property {"event"} type
 * @property {string} stream
 * @property {number} seq
 * @property {number} event_id
 * @property {string} order_id
 * @property {string} kind
 * @property {string|null} status
 * @property {string|null} previous_status
 * @property {string} source
 * @property {string|null} at
 * @property {Order|null} order
 * @property {string} [note]
 */

/** Order statuses that never change again (orders/workflow.py TERMINAL). */
const TERMINAL = new Set(["DELIVERED", "CANCELLED", "EXPIRED"]);

/**
 * @typedef {Object} Snapshot  what hello, reset and /api/events?snapshot=true carry
 * @property {Order[]} [orders]
 * @property {string} [stream]
 * @property {string} [epoch]
 * @property {number} [head_seq]
 * @property {number|null} [head_event_id]
 * @property {boolean} [truncated]     more open orders exist than the snapshot holds
 * @property {string|null} [next_cursor]  GET /api/orders?cursor= continues after the snapshot
 */

/** @typedef {"connecting"|"live"|"reconnecting"|"polling"|"stopped"} ConnectionState */

/**
 * @typedef {Object} ConnectionStatus
 * @property {ConnectionState} state
 * @property {"websocket"|"longpoll"|null} transport
 * @property {number} attempt     consecutive failed attempts (0 when healthy)
 * @property {number} [retryInMs] when reconnecting: the delay before the next attempt
 * @property {number} [code]      the last close code, if a socket closed
 * @property {string} [reason]    the last close reason
 * @property {string} [error]     why the client stopped (4403, 4429, a refused request)
 */

/**
 * @typedef {Object} StorageLike
 * @property {(key: string) => string|null} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 */

/** @typedef {string | {token: string, expires_at?: number}} TokenResult */
/** @typedef {(options: {refresh: boolean}) => TokenResult | Promise<TokenResult>} GetToken */
/** @typedef {"hello"|"reset"|"restore"|"bootstrap"} SnapshotReason */

/**
 * @typedef {Object} SnapshotInfo
 * @property {SnapshotReason} reason
 * @property {string|null} stream
 * @property {string|null} epoch
 * @property {number} headSeq
 */

/**
 * @typedef {Object} ClientOptions
 * @property {GetToken} getToken  returns a JWT (or {token, expires_at}); `refresh` asks for a new one
 * @property {string} [baseUrl]   http(s) origin of the service; defaults to location.origin
 * @property {StorageLike|null} [storage]  where positions persist; default localStorage; null: memory only
 * @property {(event: StreamEvent, client: OrderStatusClient) => void} [onEvent]
 * @property {(orders: Order[], info: SnapshotInfo) => void} [onSnapshot]
 * @property {(status: ConnectionStatus) => void} [onStatus]
 * @property {any} [WebSocket]    WebSocket constructor; default globalThis.WebSocket; null: long-poll only
 * @property {typeof fetch} [fetch]
 * @property {"auto"|"websocket"|"longpoll"} [transport]  default "auto"
 * @property {number} [pingIntervalMs]   default 15000
 * @property {number} [pongTimeoutMs]    default 10000
 * @property {number} [behindGraceMs]    how long a pong may be ahead of us before we resync; default 2000
 * @property {number} [helloTimeoutMs]   default 10000
 * @property {number} [backoffBaseMs]    default 500
 * @property {number} [backoffMaxMs]     default 15000
 * @property {number} [maxWsFailures]    WebSocket failures in a row before long-polling; default 3
 * @property {number} [wsRetryMs]        while long-polling, try WebSocket again after this; default 30000
 * @property {number} [longPollWaitS]    default 25
 * @property {number} [requestTimeoutMs] REST calls other than the long-poll; default 10000
 * @property {boolean} [autoRefresh]     refresh the token before it expires; default true
 * @property {string} [storageKeyPrefix] default "orderstatus:v1:"
 * @property {number} [maxOrders]        orders kept in memory and storage; default 500
 * @property {number} [snapshotPages]    REST pages fetched to complete a truncated snapshot; default 20
 * @property {(message: string, detail?: unknown) => void} [log]
 * @property {() => number} [random]     for tests; default Math.random
 */

/** The /ws close codes (DESIGN.md §5). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  MESSAGE_TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  BAD_MESSAGE: 4400,
  UNAUTHENTICATED: 4401,
  FORBIDDEN: 4403,
  SLOW_CONSUMER: 4408,
  TOO_MANY_CONNECTIONS: 4429,
});

/** @type {Map<number, string>} */
const FATAL_CLOSE = new Map([
  [CloseCode.FORBIDDEN, "The server refused this connection (4403 forbidden)."],
  [CloseCode.TOO_MANY_CONNECTIONS, "Too many open connections for this user (4429). Close other tabs and retry."],
]);

/** An error answer from the REST API: `{"error": {"code", "message", ...}}` and its HTTP status. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {Record<string, unknown>} [details]
   */
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** A fresh Idempotency-Key: one per user action (a click), reused by every retry of it. */
export function newIdempotencyKey() {
  const random = globalThis.crypto?.randomUUID?.();
  return random ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/** Answers after which a POST is sent again with the same key (it cannot have run twice). */
const RETRY_CODES = new Set(["idempotency_in_progress", "database_unavailable"]);

/**
 * Call the REST API; resolves to the JSON body, rejects with ApiError (HTTP error) or a
 * TypeError/AbortError (network, timeout).
 *
 * A `POST` under `/api` carries an `Idempotency-Key` (`idempotencyKey`, or a fresh one per
 * call: one call is one user action). When its answer is lost — a network error or a
 * timeout — or the server says the first attempt is still running (409
 * `idempotency_in_progress`) or nothing was changed (503 `database_unavailable`), it is sent
 * again with the same key, up to `retries` times: the server runs it at most once and replays
 * the stored answer. A caller's own abort is never retried.
 * @param {string} baseUrl
 * @param {string} path
 * @param {{method?: string, token?: string|null, body?: unknown, timeoutMs?: number, signal?: AbortSignal, fetch?: typeof fetch, idempotencyKey?: string, retries?: number, retryDelayMs?: number}} [options]
 * @returns {Promise<any>}
 */
export async function apiRequest(baseUrl, path, options = {}) {
  const { method = "GET", signal } = options;
  const keyed = method === "POST" && path.startsWith("/api/");
  if (!keyed) return sendOnce(baseUrl, path, options, null);
  const key = options.idempotencyKey ?? newIdempotencyKey();
  const retries = options.retries ?? 3;
  const delayMs = options.retryDelayMs ?? 250;
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await sendOnce(baseUrl, path, options, key);
    } catch (error) {
      const retryable =
        error instanceof ApiError ? RETRY_CODES.has(error.code) : !signal?.aborted;
      if (!retryable || attempt >= retries) throw error;
      await new Promise((r) => setTimeout(r, delayMs * 2 ** attempt));
      if (signal?.aborted) throw error;
    }
  }
}

/**
 * One HTTP exchange of apiRequest.
 * @param {string} baseUrl
 * @param {string} path
 * @param {{method?: string, token?: string|null, body?: unknown, timeoutMs?: number, signal?: AbortSignal, fetch?: typeof fetch}} options
 * @param {string|null} idempotencyKey
 * @returns {Promise<any>}
 */
async function sendOnce(baseUrl, path, options, idempotencyKey) {
  const { method = "GET", token = null, body, timeoutMs = 10000, signal, fetch: fetchImpl = globalThis.fetch } = options;
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`request timed out after ${timeoutMs} ms`)), timeoutMs);
  const onAbort = () => controller.abort(signal?.reason);
  if (signal) {
    if (signal.aborted) controller.abort(signal.reason);
    else signal.addEventListener("abort", onAbort, { once: true });
  }
  try {
    const response = await fetchImpl(new URL(path, baseUrl).toString(), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
    });
    const text = await response.text();
    /** @type {any} */
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const error = parsed && typeof parsed === "object" && parsed.error ? parsed.error : {};
      const { code = `http_${response.status}`, message = response.statusText || "request failed", ...details } = error;
      throw new ApiError(response.status, String(code), String(message), details);
    }
    return parsed;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * The claims of a JWT, decoded without verification (only to name the stream and see `exp`).
 * @param {string} token
 * @returns {Record<string, any>|null}
 */
export function decodeTokenClaims(token) {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const binary = atob(base64);
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/**
 * The stream a token reads (the server derives it the same way): a POS terminal its store's,
 * anyone else their own customer stream.
 * @param {Record<string, any>|null} claims
 * @returns {string|null}
 */
export function streamOfClaims(claims) {
  if (!claims || typeof claims.sub !== "string") return null;
  if (claims.role === "pos") return typeof claims.store_id === "string" ? `store:${claims.store_id}` : null;
  return `customer:${claims.sub}`;
}

/**
 * Jittered exponential backoff ("equal jitter"): half the capped exponential delay, plus a
 * random part of the other half, so a crowd of clients does not come back in step.
 * @param {number} attempt  1 for the first retry
 * @param {number} baseMs
 * @param {number} maxMs
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const capped = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(capped / 2 + random() * (capped / 2));
}

/** A Storage that lives only as long as the page (or test). */
export class MemoryStorage {
  constructor() {
    /** @type {Map<string, string>} */
    this.map = new Map();
  }
  /** @param {string} key */
  getItem(key) {
    return this.map.has(key) ? /** @type {string} */ (this.map.get(key)) : null;
  }
  /** @param {string} key @param {string} value */
  setItem(key, value) {
    this.map.set(key, String(value));
  }
  /** @param {string} key */
  removeItem(key) {
    this.map.delete(key);
  }
}

/** @returns {StorageLike} */
function defaultStorage() {
  try {
    const storage = globalThis.localStorage;
    if (storage) {
      const probe = "orderstatus:probe";
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    // Private mode or a sandboxed frame: fall back to memory.
  }
  return new MemoryStorage();
}

class GapError extends Error {}

/** A connection up this long has proved itself: the backoff starts over. */
const STABLE_AFTER_MS = 10000;

/**
 * @typedef {Object} Session  one WebSocket connection's bookkeeping
 * @property {any} sock
 * @property {boolean} hello
 * @property {number} liveAt
 * @property {boolean} done
 * @property {(outcome: Outcome) => void} finish
 * @property {ReturnType<typeof setTimeout>[]} timers
 * @property {ReturnType<typeof setInterval>|null} pinger
 * @property {(head: number) => void} [onPong]
 */

/**
 * @typedef {Object} Outcome  how a connection attempt or session ended
 * @property {"closed"|"ws-failed"|"auth"|"fatal"|"probe"|"error"|"resync"|"stopped"} kind
 * @property {number} [code]
 * @property {string} [reason]
 * @property {number} [liveMs]
 * @property {unknown} [error]
 */

/** The client. `connect(options)` makes one and starts it. */
export class OrderStatusClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== "function") throw new TypeError("getToken is required");
    const origin = globalThis.location ? globalThis.location.origin : undefined;
    const baseUrl = options.baseUrl ?? origin;
    if (!baseUrl) throw new TypeError("baseUrl is required outside a browser");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this._getToken = options.getToken;
    this._storage = options.storage === null ? new MemoryStorage() : options.storage ?? defaultStorage();
    this._onEvent = options.onEvent ?? (() => {});
    this._onSnapshot = options.onSnapshot ?? (() => {});
    this._onStatus = options.onStatus ?? (() => {});
    this._WS = options.WebSocket === undefined ? globalThis.WebSocket ?? null : options.WebSocket;
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._transport = options.transport ?? "auto";
    this._pingIntervalMs = options.pingIntervalMs ?? 15000;
    this._pongTimeoutMs = options.pongTimeoutMs ?? 10000;
    this._behindGraceMs = options.behindGraceMs ?? 2000;
    this._helloTimeoutMs = options.helloTimeoutMs ?? 10000;
    this._backoffBaseMs = options.backoffBaseMs ?? 500;
    this._backoffMaxMs = options.backoffMaxMs ?? 15000;
    this._maxWsFailures = options.maxWsFailures ?? 3;
    this._wsRetryMs = options.wsRetryMs ?? 30000;
    this._longPollWaitS = options.longPollWaitS ?? 25;
    this._requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this._autoRefresh = options.autoRefresh ?? true;
    this._keyPrefix = options.storageKeyPrefix ?? "orderstatus:v1:";
    this._maxOrders = options.maxOrders ?? 500;
    this._snapshotPages = options.snapshotPages ?? 20;
    this._log = options.log ?? (() => {});
    this._random = options.random ?? Math.random;

    /** @type {string|null} */ this.stream = null;
    /** @type {string|null} */ this.epoch = null;
    /** The last seq applied; meaningful once `synced`. */
    this.lastSeq = 0;
    /** @type {number|null} The event id at lastSeq, when known: sent as last_event_id. */
    this.lastEventId = null;
    /** Whether the state (orders, lastSeq) reflects the stream up to lastSeq. */
    this.synced = false;
    /** @type {Map<string, Order>} */
    this._orders = new Map();
    /** Counters, for the curious and for tests. */
    this.stats = { delivered: 0, duplicates: 0, gapsRepaired: 0, resyncs: 0, resets: 0, connects: 0, polls: 0, tokenRefreshes: 0, snapshotPages: 0 };
    /** @type {ConnectionStatus} */
    this.status = { state: "stopped", transport: null, attempt: 0 };

    /** @type {string|null} */ this._token = null;
    /** @type {number|null} */ this._tokenExp = null;
    this._tokenMarginS = 60;
    /** @type {Promise<string>|null} */ this._tokenPromise = null;
    this._restored = false;
    this._running = false;
    this._stopped = false;
    /** @type {Promise<void>|null} */ this._loop = null;
    /** @type {Session|null} */ this._session = null;
    /** @type {Promise<unknown>} */ this._chain = Promise.resolve();
    /** @type {AbortController} */ this._abort = new AbortController();
    /** @type {(() => void)|null} */ this._wake = null;
    this._wsFailures = 0;
    this._nextWsProbeAt = 0;
    this._attempt = 0;
    this._onOnline = () => this._wake?.();
  }

  // -- public API ---------------------------------------------------------------------------

  /** Start connecting (idempotent). */
  start() {
    if (this._running) return this;
    this._running = true;
    this._stopped = false;
    this._abort = new AbortController();
    // Back online: do not sit out the rest of a backoff delay.
    globalThis.addEventListener?.("online", this._onOnline);
    this._loop = this._run().finally(() => {
      this._running = false;
    });
    return this;
  }

  /** Close the connection and stop for good; resolves when everything has wound down. */
  async stop() {
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._abort.abort(new Error("client stopped"));
    const session = this._session;
    if (session) this._endSession(session, { kind: "stopped" }, CloseCode.NORMAL, "client stopped");
    this._wake?.();
    await this._loop;
    await this._chain.catch(() => {});
    if (this.status.state !== "stopped") this._setStatus({ state: "stopped", transport: null, attempt: 0 });
  }

  /** Drop the current connection and reconnect now (resuming from the last seq). */
  reconnectNow() {
    const session = this._session;
    if (session) this._endSession(session, { kind: "resync", reason: "reconnect requested" }, 4000, "reconnect");
    this._wake?.();
  }

  /** Ask getToken for a fresh token now and hand it to the open connection. */
  async refreshToken() {
    const token = await this._ensureToken(true);
    const session = this._session;
    if (session && session.hello && session.sock.readyState === 1) {
      session.sock.send(JSON.stringify({ type: "auth", token }));
    }
    return token;
  }

  /** The orders the client knows, newest first. */
  get orders() {
    return [...this._orders.values()].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)) || b.id.localeCompare(a.id));
  }

  /** @param {string} id */
  getOrder(id) {
    return this._orders.get(id) ?? null;
  }

  /** The open WebSocket, if any (diagnostics and tests). */
  get socket() {
    return this._session ? this._session.sock : null;
  }

  /** The current token (after start). */
  get token() {
    return this._token;
  }

  // -- the main loop ------------------------------------------------------------------------

  async _run() {
    let refresh = false;
    this._setStatus({ state: "connecting", transport: null, attempt: 0 });
    while (!this._stopped) {
      /** @type {Outcome} */
      let outcome;
      let transport = this._pickTransport();
      try {
        await this._ensureToken(refresh);
        refresh = false;
        this._restoreOnce();
        transport = this._pickTransport();
        outcome = transport === "websocket" ? await this._wsSession() : await this._pollSession();
      } catch (error) {
        outcome = { kind: "error", error };
      }
      if (this._stopped || outcome.kind === "stopped") break;

      let delay = 0;
      switch (outcome.kind) {
        case "fatal": {
          this._stopped = true;
          this._setStatus({ state: "stopped", transport: null, attempt: this._attempt, code: outcome.code, reason: outcome.reason, error: String(outcome.reason ?? outcome.error ?? "stopped") });
          return;
        }
        case "probe":
          continue;
        case "auth":
          refresh = true;
          this._attempt += 1;
          delay = this._attempt > 1 ? this._backoff() : 0;
          break;
        case "ws-failed":
          // The handshake cannot say why it failed; the token may have been refused.
          refresh = true;
          this._wsFailures += 1;
          this._attempt += 1;
          if (this._transport === "auto" && this._wsFailures >= this._maxWsFailures) {
            this._nextWsProbeAt = Date.now() + this._wsRetryMs;
            this._log("websocket keeps failing; falling back to long-polling", outcome);
            delay = 0;
          } else {
            delay = this._backoff();
          }
          break;
        case "closed":
          this._wsFailures = 0;
          this._attempt += 1;
          if (outcome.code === CloseCode.UNAUTHENTICATED) refresh = true;
          delay = this._backoff();
          break;
        case "resync":
          this.stats.resyncs += 1;
          this._attempt += 1;
          delay = this._attempt > 2 ? this._backoff() : 0;
          break;
        default: {
          const error = outcome.error;
          if (error instanceof ApiError && error.status === 401) {
            refresh = true;
          } else if (error instanceof ApiError && [400, 403, 404, 422].includes(error.status)) {
            this._stopped = true;
            this._setStatus({ state: "stopped", transport: null, attempt: this._attempt, error: `${error.status} ${error.code}: ${error.message}` });
            return;
          }
          this._log("connection attempt failed", error);
          this._attempt += 1;
          delay = this._backoff();
        }
      }
      if (this._stopped) break;
      this._setStatus({
        state: "reconnecting",
        transport: this.status.transport,
        attempt: this._attempt,
        retryInMs: delay,
        code: outcome.code,
        reason: outcome.reason ?? (outcome.error instanceof Error ? outcome.error.message : undefined),
      });
      await this._sleep(delay);
    }
  }

  _backoff() {
    return backoffDelay(this._attempt, this._backoffBaseMs, this._backoffMaxMs, this._random);
  }

  /** @returns {"websocket"|"longpoll"} */
  _pickTransport() {
    if (!this._WS || this._transport === "longpoll") return "longpoll";
    if (this._transport === "websocket") return "websocket";
    if (this._wsFailures >= this._maxWsFailures && Date.now() < this._nextWsProbeAt) return "longpoll";
    return "websocket";
  }

  /** @param {number} ms */
  _sleep(ms) {
    if (ms <= 0 || this._stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve(undefined);
      }
      this._wake = () => {
        this._wake = null;
        done();
      };
    });
  }

  // -- tokens -------------------------------------------------------------------------------

  /**
   * The current token, asking getToken for one if there is none, it is close to expiry, or
   * `force` is set. One request at a time.
   * @param {boolean} force
   * @returns {Promise<string>}
   */
  async _ensureToken(force) {
    const now = Date.now() / 1000;
    if (!force && this._token && (this._tokenExp === null || this._tokenExp - now > this._tokenMarginS)) {
      return this._token;
    }
    if (!this._tokenPromise) {
      const hadToken = this._token !== null;
      this._tokenPromise = (async () => {
        const result = await this._getToken({ refresh: force || hadToken });
        const token = typeof result === "string" ? result : result && result.token;
        if (typeof token !== "string" || !token) throw new Error("getToken returned no token");
        const claims = decodeTokenClaims(token);
        const exp = typeof result === "object" && typeof result.expires_at === "number" ? result.expires_at : typeof claims?.exp === "number" ? claims.exp : null;
        this._token = token;
        this._tokenExp = exp;
        const lifetime = exp === null ? 0 : exp - Date.now() / 1000;
        // Refresh with a quarter of the lifetime left (1 s at least, a minute at most).
        this._tokenMarginS = Math.max(1, Math.min(60, lifetime / 4));
        if (hadToken) this.stats.tokenRefreshes += 1;
        const stream = streamOfClaims(claims);
        if (stream && !this.stream) this.stream = stream;
        return token;
      })().finally(() => {
        this._tokenPromise = null;
      });
    }
    return this._tokenPromise;
  }

  // -- state: snapshot, events, persistence -------------------------------------------------

  _storageKey() {
    return this.stream ? this._keyPrefix + this.stream : null;
  }

  _restoreOnce() {
    if (this._restored) return;
    this._restored = true;
    const key = this._storageKey();
    if (!key) return;
    let saved = null;
    try {
      const raw = this._storage.getItem(key);
      saved = raw ? JSON.parse(raw) : null;
    } catch (error) {
      this._log("ignoring unreadable saved position", error);
    }
    if (!saved || typeof saved.seq !== "number" || saved.seq < 0) return;
    this.epoch = typeof saved.epoch === "string" ? saved.epoch : null;
    this.lastSeq = saved.seq;
    this.lastEventId = typeof saved.event_id === "number" ? saved.event_id : null;
    this.synced = true;
    this._orders = new Map((Array.isArray(saved.orders) ? saved.orders : []).map((/** @type {Order} */ o) => [o.id, o]));
    this._emitSnapshot("restore");
  }

  _persist() {
    const key = this._storageKey();
    if (!key || !this.synced) return;
    try {
      this._storage.setItem(key, JSON.stringify({ v: 1, epoch: this.epoch, seq: this.lastSeq, event_id: this.lastEventId, orders: [...this._orders.values()], at: Date.now() }));
    } catch (error) {
      this._log("could not persist the stream position", error);
    }
  }

  /**
   * Replace the state with a snapshot (completing a truncated one over REST), then report it.
   * @param {Snapshot} snapshot
   * @param {SnapshotReason} reason
   */
  async _replaceState(snapshot, reason) {
    const stream = snapshot.stream ?? null;
    if (stream && stream !== this.stream) this.stream = stream;
    this.epoch = snapshot.epoch ?? null;
    this.lastSeq = snapshot.head_seq ?? 0;
    this.lastEventId = typeof snapshot.head_event_id === "number" ? snapshot.head_event_id : null;
    this.synced = true;
    this._orders = new Map((snapshot.orders ?? []).map((o) => [o.id, o]));
    if (reason === "reset") this.stats.resets += 1;
    if (snapshot.truncated) await this._fetchRestOfSnapshot(snapshot.next_cursor ?? null);
    this._persist();
    this._emitSnapshot(reason);
  }

  /**
   * The server cut the snapshot at its bound: page the rest of the open orders from
   * GET /api/orders (newest first, all statuses) until the list ends, `maxOrders` are held or
   * `snapshotPages` pages were read. A failure leaves the snapshot as it came (logged).
   * @param {string|null} cursor
   */
  async _fetchRestOfSnapshot(cursor) {
    try {
      for (let page = 0; page < this._snapshotPages && this._orders.size < this._maxOrders && !this._stopped; page += 1) {
        const token = await this._ensureToken(false);
        const params = new URLSearchParams({ limit: "100" });
        if (cursor) params.set("cursor", cursor);
        const body = await apiRequest(this.baseUrl, `/api/orders?${params}`, { token, fetch: this._fetch, signal: this._abort.signal, timeoutMs: this._requestTimeoutMs });
        this.stats.snapshotPages += 1;
        for (const order of Array.isArray(body?.orders) ? body.orders : []) {
          if (TERMINAL.has(order.status) || this._orders.has(order.id)) continue;
          this._orders.set(order.id, order);
        }
        cursor = body?.next_cursor ?? null;
        if (!cursor) break;
      }
    } catch (error) {
      this._log("could not fetch the rest of a truncated snapshot", error);
    }
  }

  /** @param {SnapshotReason} reason */
  _emitSnapshot(reason) {
    try {
      this._onSnapshot(this.orders, { reason, stream: this.stream, epoch: this.epoch, headSeq: this.lastSeq });
    } catch (error) {
      this._log("onSnapshot threw", error);
    }
  }

  /**
   * Apply one event in stream order: drop what we have, repair a jump first.
   * @param {StreamEvent} event
   */
  async _handleEvent(event) {
    if (!this.synced || typeof event.seq !== "number") return;
    if (event.stream && this.stream && event.stream !== this.stream) return;
    if (event.seq <= this.lastSeq) {
      this.stats.duplicates += 1;
      return;
    }
    if (event.seq > this.lastSeq + 1) {
      const resets = this.stats.resets;
      await this._catchUp(event.seq - 1);
      // The log was reset under us: this connection's positions belong to the old one.
      if (this.stats.resets !== resets) throw new GapError("the stream was reset; reconnecting");
      if (event.seq <= this.lastSeq) {
        this.stats.duplicates += 1;
        return;
      }
      if (event.seq !== this.lastSeq + 1) throw new GapError(`seq ${this.lastSeq + 1}..${event.seq - 1} could not be fetched`);
    }
    this._apply(event);
  }

  /** @param {StreamEvent} event */
  _apply(event) {
    const known = this._orders.get(event.order_id);
    if (event.order) {
      if (!known || (event.order.version ?? 0) >= (known.version ?? 0)) this._orders.set(event.order_id, event.order);
    } else if (known && event.kind === "order.status" && event.status) {
      this._orders.set(event.order_id, { ...known, status: event.status });
    }
    this._prune();
    this.lastSeq = event.seq;
    this.lastEventId = typeof event.event_id === "number" ? event.event_id : null;
    this.stats.delivered += 1;
    this._persist();
    try {
      this._onEvent(event, this);
    } catch (error) {
      this._log("onEvent threw", error);
    }
  }

  _prune() {
    if (this._orders.size <= this._maxOrders) return;
    const oldest = [...this._orders.values()].sort((a, b) => String(a.updated_at).localeCompare(String(b.updated_at)));
    for (const order of oldest.slice(0, this._orders.size - this._maxOrders)) this._orders.delete(order.id);
  }

  /**
   * Fetch events after lastSeq (up to `upto`, or until the REST page says no more) and apply
   * them; belt and braces behind the server's own ordering.
   * @param {number} upto
   */
  async _catchUp(upto) {
    const before = this.lastSeq;
    while (this.lastSeq < upto && !this._stopped) {
      const body = await this._fetchEvents(this.lastSeq, 0);
      if (body.reset) {
        await this._replaceState(body, "reset");
        return;
      }
      const events = Array.isArray(body.events) ? body.events : [];
      for (const event of events) {
        if (event.seq <= this.lastSeq) continue;
        if (event.seq !== this.lastSeq + 1) break;
        this._apply(event);
      }
      if (!events.length || !body.more) break;
    }
    if (this.lastSeq > before) this.stats.gapsRepaired += 1;
  }

  /**
   * @param {number} since
   * @param {number} wait  seconds to long-poll
   */
  async _fetchEvents(since, wait) {
    const token = await this._ensureToken(false);
    const params = new URLSearchParams({ since: String(since) });
    if (this.epoch) params.set("epoch", this.epoch);
    if (this.lastEventId !== null && since === this.lastSeq) params.set("last_event_id", String(this.lastEventId));
    if (wait > 0) params.set("wait", String(wait));
    return apiRequest(this.baseUrl, `/api/events?${params}`, {
      token,
      fetch: this._fetch,
      signal: this._abort.signal,
      timeoutMs: wait > 0 ? wait * 1000 + this._requestTimeoutMs : this._requestTimeoutMs,
    });
  }

  /**
   * Run `fn` after everything queued before it; message handling is strictly sequential.
   * @template T
   * @param {() => Promise<T>|T} fn
   * @returns {Promise<T>}
   */
  _enqueue(fn) {
    const next = this._chain.then(fn);
    this._chain = next.catch(() => {});
    return next;
  }

  /** @param {Partial<ConnectionStatus> & {state: ConnectionState}} status */
  _setStatus(status) {
    const next = /** @type {ConnectionStatus} */ ({ transport: null, attempt: 0, ...status });
    const prev = this.status;
    this.status = next;
    if (prev.state === next.state && prev.transport === next.transport && prev.error === next.error && prev.retryInMs === next.retryInMs && prev.attempt === next.attempt) return;
    try {
      this._onStatus(next);
    } catch (error) {
      this._log("onStatus threw", error);
    }
  }

  // -- WebSocket ----------------------------------------------------------------------------

  _wsUrl() {
    const url = new URL("/ws", this.baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", /** @type {string} */ (this._token));
    if (this.synced) {
      url.searchParams.set("since", String(this.lastSeq));
      if (this.epoch) url.searchParams.set("epoch", this.epoch);
      if (this.lastEventId !== null) url.searchParams.set("last_event_id", String(this.lastEventId));
    }
    return url.toString();
  }

  /** @returns {Promise<Outcome>} */
  async _wsSession() {
    await this._chain; // resume from the last seq actually applied
    if (this._stopped) return { kind: "stopped" };
    this.stats.connects += 1;
    if (this.status.state !== "reconnecting") this._setStatus({ state: "connecting", transport: "websocket", attempt: this._attempt });
    return new Promise((resolve) => {
      let sock;
      try {
        sock = new this._WS(this._wsUrl());
      } catch (error) {
        resolve({ kind: "ws-failed", error, reason: error instanceof Error ? error.message : String(error) });
        return;
      }
      /** @type {Session} */
      const session = {
        sock,
        hello: false,
        liveAt: 0,
        done: false,
        timers: [],
        pinger: null,
        finish: (outcome) => {
          if (session.done) return;
          session.done = true;
          for (const timer of session.timers) clearTimeout(timer);
          if (session.pinger) clearInterval(session.pinger);
          if (this._session === session) this._session = null;
          resolve(outcome);
        },
      };
      this._session = session;
      session.timers.push(
        setTimeout(() => {
          if (!session.hello) this._endSession(session, { kind: "ws-failed", reason: "no hello from the server" }, 4000, "hello timeout");
        }, this._helloTimeoutMs),
      );
      sock.onmessage = (/** @type {{data: unknown}} */ message) => {
        if (session.done) return;
        let parsed;
        try {
          parsed = JSON.parse(typeof message.data === "string" ? message.data : String(message.data));
        } catch {
          this._log("ignoring a frame that is not JSON");
          return;
        }
        this._enqueue(() => this._onWsMessage(session, parsed)).catch((error) => {
          this._log("could not apply a message; resyncing", error);
          this._endSession(session, { kind: "resync", error, reason: error instanceof Error ? error.message : String(error) }, 4000, "resync");
        });
      };
      sock.onerror = () => {
        // A close event follows; it carries the code.
      };
      sock.onclose = (/** @type {{code: number, reason: string}} */ event) => {
        const code = event.code;
        const reason = event.reason || "";
        const fatal = FATAL_CLOSE.get(code);
        if (fatal) session.finish({ kind: "fatal", code, reason: reason ? `${fatal} (${reason})` : fatal });
        else if (code === CloseCode.UNAUTHENTICATED) session.finish({ kind: "auth", code, reason });
        else if (!session.hello) session.finish({ kind: "ws-failed", code, reason });
        else session.finish({ kind: "closed", code, reason, liveMs: Date.now() - session.liveAt });
      };
    });
  }

  /**
   * Stop using a session's socket now (without waiting for a close handshake that may never
   * come on a dead network) and end the session with `outcome`.
   * @param {Session} session
   * @param {Outcome} outcome
   * @param {number} code
   * @param {string} reason
   */
  _endSession(session, outcome, code, reason) {
    if (session.done) return;
    const sock = session.sock;
    sock.onmessage = null;
    sock.onclose = null;
    sock.onerror = null;
    try {
      if (sock.readyState === 0 || sock.readyState === 1) sock.close(code, reason);
    } catch {
      // Already closing.
    }
    session.finish({ ...outcome, liveMs: session.hello ? Date.now() - session.liveAt : 0 });
  }

  /**
   * @param {Session} session
   * @param {any} message
   */
  async _onWsMessage(session, message) {
    if (session.done || !message || typeof message !== "object") return;
    switch (message.type) {
      case "hello": {
        if (Array.isArray(message.orders)) {
          await this._replaceState(message, "hello");
        } else if (!this.synced || (this.epoch && message.epoch !== this.epoch) || message.head_seq < this.lastSeq) {
          // A resume the server accepted but that does not match what we hold: start clean.
          this.synced = false;
          this.lastSeq = 0;
          this.lastEventId = null;
          this._endSession(session, { kind: "resync", reason: "hello does not match our position" }, 4000, "resync");
          return;
        } else {
          if (message.stream && message.stream !== this.stream) this.stream = message.stream;
          if (!this.epoch && message.epoch) {
            this.epoch = message.epoch;
            this._persist();
          }
        }
        this._goLive(session);
        return;
      }
      case "reset":
        await this._replaceState(message, "reset");
        this._goLive(session);
        return;
      case "event":
        if (!session.hello) return;
        await this._handleEvent(message);
        return;
      case "pong":
        this._onPong(session, message.head_seq);
        return;
      default:
        this._log("ignoring an unknown message type", message.type);
    }
  }

  /** @param {Session} session */
  _goLive(session) {
    if (session.hello) return;
    session.hello = true;
    session.liveAt = Date.now();
    this._wsFailures = 0;
    // Only a connection that stays up a while resets the backoff: one that flaps keeps backing off.
    session.timers.push(
      setTimeout(() => {
        this._attempt = 0;
      }, STABLE_AFTER_MS),
    );
    this._setStatus({ state: "live", transport: "websocket", attempt: 0 });
    /** @type {number} */
    let pongDue = 0;
    session.pinger = setInterval(() => {
      if (session.done) return;
      if (pongDue && Date.now() > pongDue) {
        this._endSession(session, { kind: "closed", reason: "no pong from the server" }, 4000, "pong timeout");
        return;
      }
      if (!pongDue) pongDue = Date.now() + this._pongTimeoutMs;
      try {
        session.sock.send(JSON.stringify({ type: "ping" }));
      } catch (error) {
        this._endSession(session, { kind: "closed", error, reason: "ping failed" }, 4000, "ping failed");
      }
    }, this._pingIntervalMs);
    /** @param {number} head */
    session.onPong = (head) => {
      pongDue = 0;
      if (typeof head === "number" && head > this.lastSeq) {
        // Events may still be in flight behind the pong; only if they do not come, resync.
        session.timers.push(
          setTimeout(() => {
            if (session.done || this.lastSeq >= head) return;
            this._log(`behind the stream head (${this.lastSeq} < ${head}); catching up`);
            this._enqueue(() => this._catchUp(head)).catch((error) => {
              this._endSession(session, { kind: "resync", error, reason: "catch-up failed" }, 4000, "resync");
            });
          }, this._behindGraceMs),
        );
      }
    };
    if (this._autoRefresh) this._scheduleRefresh(session);
  }

  /**
   * @param {Session} session
   * @param {number} head
   */
  _onPong(session, head) {
    session.onPong?.(head);
  }

  /** @param {Session} session */
  _scheduleRefresh(session) {
    if (this._tokenExp === null) return;
    const dueMs = (this._tokenExp - this._tokenMarginS) * 1000 - Date.now();
    session.timers.push(
      setTimeout(async () => {
        if (session.done) return;
        try {
          const token = await this._ensureToken(true);
          if (!session.done && session.sock.readyState === 1) session.sock.send(JSON.stringify({ type: "auth", token }));
          if (!session.done) this._scheduleRefresh(session);
        } catch (error) {
          this._log("token refresh failed; retrying", error);
          if (!session.done && this._tokenExp !== null && this._tokenExp * 1000 > Date.now()) {
            session.timers.push(setTimeout(() => this._scheduleRefresh(session), Math.min(5000, this._tokenExp * 1000 - Date.now())));
          }
        }
      }, Math.max(0, dueMs)),
    );
  }

  // -- long-poll ----------------------------------------------------------------------------

  /** @returns {Promise<Outcome>} */
  async _pollSession() {
    await this._chain;
    while (!this._stopped) {
      if (this._transport === "auto" && this._WS && Date.now() >= this._nextWsProbeAt) return { kind: "probe" };
      const bootstrapping = !this.synced;
      // With a position to poll from, we are as live as long-polling gets.
      if (!bootstrapping && this._attempt === 0) this._setStatus({ state: "polling", transport: "longpoll", attempt: 0 });
      let body;
      try {
        // No state yet: start from the snapshot the server gives, not a replay of the whole log.
        body = bootstrapping ? await this._fetchSnapshot() : await this._fetchEvents(this.lastSeq, this._longPollWaitS);
      } catch (error) {
        if (this._stopped) return { kind: "stopped" };
        if (error instanceof ApiError && error.status === 401) return { kind: "auth", code: 401, reason: error.message };
        return { kind: "error", error };
      }
      this.stats.polls += 1;
      await this._enqueue(() => this._applyPoll(body, bootstrapping));
      if (this._stopped) return { kind: "stopped" };
      this._attempt = 0;
      if (this.synced) this._setStatus({ state: "polling", transport: "longpoll", attempt: 0 });
    }
    return { kind: "stopped" };
  }

  /** The stream's head and open orders, to go live from (GET /api/events?snapshot=true). */
  async _fetchSnapshot() {
    const token = await this._ensureToken(false);
    return apiRequest(this.baseUrl, "/api/events?snapshot=true", {
      token,
      fetch: this._fetch,
      signal: this._abort.signal,
      timeoutMs: this._requestTimeoutMs,
    });
  }

  /**
   * @param {any} body
   * @param {boolean} bootstrapping  no state yet: the body is a snapshot to start from
   */
  async _applyPoll(body, bootstrapping) {
    if (body.reset) {
      await this._replaceState(body, "reset");
      return;
    }
    if (bootstrapping) {
      await this._replaceState(body, "bootstrap");
      return;
    }
    if (body.stream && !this.stream) this.stream = body.stream;
    if (body.epoch && !this.epoch) this.epoch = body.epoch;
    const events = Array.isArray(body.events) ? body.events : [];
    for (const event of events) await this._handleEvent(event);
  }
}

/**
 * Create a client and start it.
 * @param {ClientOptions} options
 */
export function connect(options) {
  return new OrderStatusClient(options).start();
}
