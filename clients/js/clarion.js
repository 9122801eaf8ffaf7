// clarion browser client: a dependency-free ES module, also served by the hub at /clarion.js.
// One file on purpose: a page imports the whole client with one request and no bundler.
//
//   import { connect } from "/clarion.js";
//   const client = connect(location.origin, { getToken: () => fetchMyToken(), store: localStorage });
//   client.subscribe("chat:lobby", {
//     onPublication: (pub) => render(pub.data),
//     onReset: (reset) => reloadState(),           // history could not cover a gap
//   });
//
// Reconnects with full-jitter exponential backoff and resumes every subscription from its last
// cursor. Transports: WebSocket, then Server-Sent Events, then long polling; a step down happens
// only when a transport fails while the hub answers, and the client tries to step back up.

export const SUBPROTOCOL = "clarion.v1";
export const TRANSPORTS = ["ws", "sse", "poll"];

// ---- the protocol's tables -------------------------------------------------------------------

// The same tables as the hub's (clarion.protocol.codes and clarion.protocol.errors; a test keeps
// them equal). Close codes: what each means and whether a client comes back after it.
export const CLOSE_CODES = {
  1000: { reason: "normal", reconnect: false },
  1001: { reason: "going away", reconnect: true },
  1002: { reason: "protocol error", reconnect: false },
  1003: { reason: "unsupported data", reconnect: false },
  1007: { reason: "invalid data", reconnect: false },
  1008: { reason: "policy violation", reconnect: false },
  1009: { reason: "message too big", reconnect: false },
  1011: { reason: "internal error", reconnect: true },
  4000: { reason: "shutdown", reconnect: true },
  4001: { reason: "slow", reconnect: true },
  4002: { reason: "no pong", reconnect: true },
  4003: { reason: "server error", reconnect: true },
  4004: { reason: "token expired", reconnect: true },
  4005: { reason: "node full", reconnect: true },
  4500: { reason: "unauthorized", reconnect: false },
  4501: { reason: "disconnected", reconnect: false },
  4502: { reason: "forbidden", reconnect: false },
  4503: { reason: "too many connections", reconnect: false },
  4504: { reason: "idle", reconnect: false },
  4505: { reason: "abuse", reconnect: false },
  4506: { reason: "handshake timeout", reconnect: false },
  4507: { reason: "bad request", reconnect: false },
};

// Error codes: the HTTP status that carries each, and the close code when it ends a connection
// (whose `reconnect` says whether to try again).
export const ERRORS = {
  bad_request: { status: 400, close: 4507 },
  unknown_op: { status: 400, close: 4507 },
  bad_channel: { status: 400, close: 4507 },
  bad_cursor: { status: 400, close: 4507 },
  already_subscribed: { status: 400, close: 4507 },
  not_subscribed: { status: 400, close: 4507 },
  unsubscribed: { status: 409, close: 4507 },
  unauthorized: { status: 401, close: 4500 },
  token_expired: { status: 401, close: 4004 },
  forbidden: { status: 403, close: 4502 },
  origin_forbidden: { status: 403, close: 4502 },
  local_only: { status: 403, close: 4502 },
  not_found: { status: 404, close: 4507 },
  method_not_allowed: { status: 405, close: 4507 },
  upgrade_required: { status: 426, close: 4507 },
  too_large: { status: 413, close: 1009 },
  limit_exceeded: { status: 429, close: 4507 },
  too_many_subscriptions: { status: 429, close: 4507 },
  too_many_connections: { status: 429, close: 4503 },
  too_many_channels: { status: 400, close: 4507 },
  unsafe_target: { status: 400, close: 4507 },
  configured_webhook: { status: 403, close: 4502 },
  bad_timeout: { status: 400, close: 4507 },
  rate_limited: { status: 429, close: 4505 },
  ephemeral_rate_limited: { status: 429, close: 4505 },
  revoked: { status: 401, close: 4501 },
  shutting_down: { status: 503, close: 4000 },
  not_started: { status: 503, close: 4000 },
  engine_not_shared: { status: 503, close: 4003 },
  node_full: { status: 503, close: 4005 },
  engine_unavailable: { status: 503, close: 4003 },
  hook_unavailable: { status: 503, close: 4003 },
  internal: { status: 500, close: 4003 },
};

// Whether a client should reconnect after `code`; outside the table, codes 4000–4499 say yes,
// 4500–4999 no, and of the standard ones those that mean "try again later".
const RECONNECT = new Set([1006, 1012, 1013, 1014]);
export function shouldReconnect(code) {
  if (code === undefined || code === null) return true;
  const known = CLOSE_CODES[code];
  if (known) return known.reconnect;
  if (code >= 4000 && code < 4500) return true;
  if (code >= 4500 && code < 5000) return false;
  return RECONNECT.has(code);
}

export const TOKEN_EXPIRED = 4004;
const CAPPED = 4503; // too many connections (of one address, of one user)
// Tries of a replacement refused over a cap that the stream it replaces counted for: a busy hub
// lets go of that one a little after it is cut. The waits double from the backoff's base: 31
// times it in all (15.5 s by default) before the refusal is taken as the hub's word.
const CAPPED_TRIES = 6;

// The rule of an error code; for a code outside the table (an application's own refusal, a
// proxy's answer), the rule its HTTP status implies (`status` 0: it came over WebSocket).
export function errorRule(code, status = 0) {
  let rule = ERRORS[code];
  if (!rule) {
    const later = status === 408 || status === 425 || status === 429 || status >= 500;
    const fallback = status === 0 || status === 403 ? "forbidden" : status === 401 ? "unauthorized"
      : later ? "internal" : "bad_request";
    rule = ERRORS[fallback];
  }
  return { ...rule, reconnect: shouldReconnect(rule.close) };
}

// What a refusal by the hub means, decided exactly as the Python client does (a test compares
// them): "refresh" (the token expired and getToken may give a fresh one), "backoff" (try again
// later), "stop" (the client ends) or "fail" (only this subscription or request fails). Refusals
// of one channel (permission, name, cursor, size) end that subscription when it is a request of
// its own (SSE, poll); `whole`: the connection itself was refused (WebSocket connect).
const ONE_CHANNEL = new Set([4502, 4507, 1009]);
export function refusal(code, { status = 0, refreshable = false, whole = false } = {}) {
  const rule = errorRule(code, status);
  if (rule.close === TOKEN_EXPIRED) return refreshable ? "refresh" : "stop";
  // A budget that refills (a user's subscriptions, say): the same request, after its wait.
  if (rule.reconnect || code === "rate_limited") return "backoff";
  return whole || !ONE_CHANNEL.has(rule.close) ? "stop" : "fail";
}

// Whether a connection that ended with close code `code` ends the client; `reconnect` is the
// hub's own word when it sent a disconnect signal. The same token again would expire again.
export function endsClient(code, reconnect, refreshable) {
  if (code === TOKEN_EXPIRED && !refreshable) return true;
  return !(typeof reconnect === "boolean" ? reconnect : shouldReconnect(code));
}

// What a rate limit asked to wait (`retryAfter` seconds), in ms: at least that, and up to half
// as long again, so that the tabs it refused together do not all come back together.
export function retryAfterDelay(retryAfter, random = Math.random) {
  return retryAfter * 1000 * (1 + random() / 2);
}

// Full jitter: a random delay in [0, min(cap, base·2^attempt)), so that many clients dropped at
// once do not come back at once.
export function backoffDelay(attempt, base = 500, cap = 20000, random = Math.random) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

// ---- endpoints ------------------------------------------------------------------------------

// Every endpoint from one URL: the hub's base (`http://host:8000`, `https://app/rt`) or one of
// its transport endpoints (`ws://host/ws`, `.../sse`, `.../poll`).
export function endpoints(url, base) {
  const where = base ?? (globalThis.location ? globalThis.location.href : undefined);
  const u = new URL(url, where);
  const path = u.pathname.replace(/\/(ws|sse|poll)$/, "").replace(/\/+$/, "");
  const scheme = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  if (scheme !== "http:" && scheme !== "https:") throw new Error(`not a hub URL: ${url}`);
  const http = `${scheme}//${u.host}${path}`;
  return {
    http,
    ws: `${scheme === "https:" ? "wss:" : "ws:"}//${u.host}${path}/ws`,
    sse: `${http}/sse`,
    poll: `${http}/poll`,
    healthz: `${http}/healthz`,
    publish: `${http}/client/publish`,
    history: `${http}/client/history`,
    presence: `${http}/client/presence`,
    presence_stats: `${http}/client/presence_stats`,
  };
}

// When a token expires, from its `exp` claim (seconds), or null; the signature is the hub's
// business: this only schedules a refresh.
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp : null;
  } catch {
    return null;
  }
}

// How long before `expires` (Unix seconds) to ask for a new token: a tenth of what is left, at
// least two seconds (time for getToken() and the refresh on a busy page), at most thirty.
export function refreshDelay(expires, now = Date.now()) {
  const left = expires * 1000 - now;
  const margin = Math.min(30000, Math.max(2000, left / 10));
  return Math.max(0, left - margin);
}

// ---- Server-Sent Events parsing -------------------------------------------------------------

// The event-stream format of the HTML standard: lines end with CR, LF or CRLF (also across
// chunks), one leading BOM is dropped, `:` lines are comments, a blank line dispatches.
// `onEvent({type, data, id})` gets each event with data; `onId(id)` every `id:` that an event
// dispatch (with or without data) makes current. Lines longer than `maxLine` characters throw:
// the reader stays bounded whatever the stream sends.
export class SseParser {
  constructor({ onEvent = () => {}, onId = () => {}, onRetry = () => {}, onComment = () => {},
                maxLine = 4 * 1024 * 1024 } = {}) {
    Object.assign(this, { onEvent, onId, onRetry, onComment, maxLine });
    this.decoder = new TextDecoder("utf-8", { ignoreBOM: true }); // the BOM is ours to drop, once
    this.pending = "";       // an incomplete line
    this.skipLF = false;     // the previous chunk ended with CR: a leading LF belongs to it
    this.first = true;       // a BOM is dropped only at the very start
    this.data = [];
    this.type = "";
    this.lastId = "";
    this.idSeen = false;
  }

  feed(chunk) {
    let text = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    if (this.first && text.length) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    let start = 0;
    if (this.skipLF && text.length) {
      if (text[0] === "\n") start = 1;
      this.skipLF = false;
    }
    const n = text.length;
    for (let i = start; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this.pending + text.slice(start, i);
      this.pending = "";
      if (c === 13) {
        if (i + 1 < n) { if (text.charCodeAt(i + 1) === 10) i++; }
        else this.skipLF = true;
      }
      start = i + 1;
      this._line(line);
    }
    if (start < n) {
      this.pending += text.slice(start);
      if (this.pending.length > this.maxLine) throw new Error("event-stream line too long");
    }
  }

  // The stream ended: an incomplete event is dropped, as the standard says.
  end() {
    this.pending = "";
    this.data = [];
    this.type = "";
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") return this.onComment(line.slice(1));
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id") { if (!value.includes("\0")) { this.lastId = value; this.idSeen = true; } }
    else if (field === "retry") { if (/^\d+$/.test(value)) this.onRetry(Number(value)); }
  }

  _dispatch() {
    if (this.idSeen) { this.idSeen = false; this.onId(this.lastId); }
    if (this.data.length) {
      this.onEvent({ type: this.type || "message", data: this.data.join("\n"), id: this.lastId });
    }
    this.data = [];
    this.type = "";
  }
}

// ---- small pieces ---------------------------------------------------------------------------

class Emitter {
  constructor() { this.handlers = new Map(); }
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) { this.handlers.get(event)?.delete(fn); }
  emit(event, ...args) {
    const handlers = this.handlers.get(event);
    // An error nobody listens to is not lost: a developer finds it in the console.
    if (event === "error" && !handlers?.size) console.warn("clarion:", args[0]);
    for (const fn of [...(handlers || [])]) {
      try { fn(...args); } catch (error) { console.error("clarion: handler failed", error); }
    }
  }
}

class ClarionError extends Error {
  constructor(error, status) {
    super(error?.message || String(error?.code || "error"));
    this.code = error?.code || "error";
    if (error?.channel !== undefined) this.channel = error.channel; // the one channel refused
    if (error?.cursor !== undefined) this.cursor = error.cursor; // the cursor it could not read
    if (error?.limit !== undefined) this.limit = error.limit; // a cap the request went over
    // Seconds a rate limit asks to wait before the same request (`Retry-After` over HTTP).
    if (Number.isFinite(error?.retry_after)) this.retryAfter = error.retry_after;
    if (status !== undefined) this.status = status;
  }
}

// What a call rejects with when its answer will not come, each with its own code: the hub may
// or may not have carried it out ("timeout", "connection_lost"), or it was never sent ("closed").
function timeoutError(op, ms) {
  return new ClarionError({ code: "timeout", message: `no answer to ${op} within ${ms} ms` });
}

function lostError(cause) {
  const why = cause?.message || String(cause);
  const message = why === "connection lost" ? why : `connection lost: ${why}`;
  return new ClarionError({ code: "connection_lost", message });
}

function closedError() {
  return new ClarionError({ code: "closed", message: "the client is closed" });
}

// `localStorage`, a Map, or any object with get/set (or getItem/setItem).
function storeOf(store) {
  if (!store) return null;
  if (typeof store.getItem === "function") {
    return { get: (k) => store.getItem(k), set: (k, v) => store.setItem(k, v) };
  }
  return { get: (k) => store.get(k), set: (k, v) => store.set(k, v) };
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// A frame's size in UTF-8 bytes, as the hub counts it; 0 without a `limit` to check, and not
// encoded when it fits anyway (a UTF-16 unit is at most three bytes).
const frameBytes = (frame, limit) => {
  if (!limit || frame.length * 3 <= limit) return 0;
  return new TextEncoder().encode(frame).length;
};

// Seconds of a long poll: at most the hub's default bound, and after a hub's refusal of a
// longer one, 10, then none (plain polls, one a second).
const MAX_POLL_TIMEOUT = 60;
const FALLBACK_POLL_TIMEOUT = 10;
const PLAIN_POLL_PAUSE = 1000;
// The longest query of a DELETE /poll that leaves presence; more channels take more requests.
const LEAVE_QUERY_CHARS = 4000;

// An event stream that replaces another opens beside it, and takes its place once it has
// opened. One that has not opened after this many ms (at most openTimeout) takes it at once:
// over HTTP/1.1 a browser that has no connection left for it (six per origin, shared by every
// tab) gets the old stream's.
const TAKEOVER_DELAY = 3000;

// Before a channel name in `store`: the cursor a subscription's event stream opened at (no
// channel name holds a "*").
const STREAM_MARK = "*";

// The browser says it has no network (navigator.onLine is false): every try would fail, and
// log a failed load. Only "false" counts: where there is no navigator (Node) nothing waits.
const offline = () => typeof navigator !== "undefined" && navigator.onLine === false
  && typeof addEventListener === "function";

// ---- subscriptions --------------------------------------------------------------------------

class Subscription extends Emitter {
  constructor(client, channel, options) {
    super();
    this.client = client;
    this.channel = channel;
    this.latest = Boolean(options.latest);
    // Its own cursor, of its channel alone: `since`, the one stored, then its publications'.
    this.cursor = options.since || client._stored(channel) || null;
    // Without one, off WebSocket: the cursor its event stream opened at (of several channels),
    // where a subscription without publications still is.
    this.streamCursor = this.cursor ? null : client._stored(STREAM_MARK + channel);
    this.state = "unsubscribed";
    this.lastOffset = null;
    this.lastEpoch = null;
    this.attachedTo = null; // the client's generation (connection) it was last attached in
    for (const [name, key] of [["publication", "onPublication"], ["reset", "onReset"],
      ["subscribing", "onSubscribing"], ["subscribed", "onSubscribed"],
      ["unsubscribed", "onUnsubscribed"], ["join", "onJoin"], ["leave", "onLeave"],
      ["error", "onError"]]) {
      if (typeof options[key] === "function") this.on(name, options[key]);
    }
  }

  unsubscribe() {
    if (this.state === "unsubscribed" && !this.client.subs.has(this.channel)) return;
    this.client._unsubscribe(this);
    this._ended("client");
  }

  _moveTo(cursor) {
    if (!cursor || cursor === this.cursor) return;
    this.cursor = cursor;
    this.client._store(this.channel, cursor);
    if (this.streamCursor) this._openedAt(null);
  }

  // Its cursors could not be read: it starts from now.
  _forget() {
    this._dropOwn();
    this._openedAt(null);
  }

  _dropOwn() {
    if (this.cursor) { this.cursor = null; this.client._store(this.channel, ""); }
  }

  // Off WebSocket, where the stream it is on opened; kept (and stored) only while it has no
  // cursor of its own.
  _openedAt(cursor) {
    if (cursor === this.streamCursor) return;
    this.streamCursor = cursor;
    this.client._store(STREAM_MARK + this.channel, cursor || "");
  }

  _subscribing() {
    if (this.state === "subscribing") return;
    this.state = "subscribing";
    this.emit("subscribing", { channel: this.channel });
  }

  // `resumed`: it resumed from its cursor, which the publications replayed move on; the reply's
  // cursor is the channel's top, which it may not have reached yet.
  _subscribed(ok, resumed = false) {
    this.state = "subscribed";
    // `since`: older publications follow (the hub resumed it, or `latest`); it stands there
    // until they come, so a drop in between resumes before them, not at the top.
    if (!ok.reset && !resumed) this._moveTo(ok.since ?? ok.cursor);
    this.emit("subscribed", { channel: this.channel, recovered: ok.recovered !== false,
      cursor: this.cursor, transport: this.client.transport });
  }

  _deliver(pub) {
    // A live signal has no place in the stream: it moves no cursor and is never a repeat.
    if (pub.ephemeral === true) return this.emit("publication", pub);
    // Within an epoch offsets only grow; across reconnects and transports this drops repeats.
    if (this.lastEpoch === pub.epoch && this.lastOffset !== null && pub.offset <= this.lastOffset) return;
    this.lastEpoch = pub.epoch;
    this.lastOffset = pub.offset;
    this._moveTo(pub.cursor);
    this.emit("publication", pub);
  }

  _reset(reset) {
    this.lastOffset = null;
    this._moveTo(reset.cursor);
    this.emit("reset", { channel: this.channel, reason: reset.reason, cursor: this.cursor });
  }

  _ended(reason) {
    this.state = "unsubscribed";
    this.emit("unsubscribed", { channel: this.channel, reason });
  }
}

// ---- the client -----------------------------------------------------------------------------

class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    this.urls = endpoints(url, options.base);
    this.getToken = options.getToken || (options.token ? () => options.token : null);
    this.refreshable = typeof options.getToken === "function"; // a fixed token stays the same
    let order = options.transports || (options.transport && options.transport !== "auto"
      ? [options.transport] : TRANSPORTS);
    order = order.filter((t) => TRANSPORTS.includes(t));
    if (typeof WebSocket !== "function") order = order.filter((t) => t !== "ws");
    if (!order.length) throw new Error("no usable transport");
    this.order = order;
    this.level = 0;
    this.transport = null;
    this.state = "disconnected";
    this.store = storeOf(options.store);
    this.storePrefix = options.storePrefix ?? "clarion:cursor:";
    this.base = options.backoffBase ?? 500;
    this.cap = options.backoffCap ?? 20000;
    this.upgradeInterval = options.upgradeInterval ?? 60000;
    // The hub's poll.timeout_max is 60 by default; a hub that allows less refuses a longer
    // poll (bad_timeout), and the client then asks for less (_shorterPolls).
    this.pollTimeout = Math.min(options.pollTimeout ?? 25, MAX_POLL_TIMEOUT);
    this.openTimeout = options.openTimeout ?? 10000;
    this.sseSilence = options.sseSilence ?? 45000;
    // A connection that dies without closing (a NAT that forgot it, a laptop woken on another
    // network) shows no error in a browser. After pingInterval ms without a frame from the hub,
    // the client sends a ping op; no answer within pongTimeout ms, and it is taken for dead.
    this.pingInterval = options.pingInterval ?? 25000;
    this.pongTimeout = options.pongTimeout ?? 10000;
    // publish, history and presence reject with code "timeout" when the hub does not answer
    // within requestTimeout ms (the Python client's request_timeout); getToken() has
    // tokenTimeout ms to settle, or the try fails as if it had thrown.
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.tokenTimeout = options.tokenTimeout ?? 10000;
    this.heard = 0; // when the open WebSocket last brought a frame
    // The hub's limits.max_message_bytes: a frame over it closes the whole connection (1009,
    // "do not reconnect"); null or 0: no check.
    this.maxMessageBytes = options.maxMessageBytes === undefined ? 65536 : options.maxMessageBytes;
    this.subs = new Map();
    this.token = null;
    this.tokenExpires = null;
    this.clientId = null;
    this.user = null;
    this.attempt = 0;
    this.closed = false;
    this.nextId = 1;
    this.pending = new Map();
    this.ws = null;
    this.generation = 0;     // bumped on every (re)connect: late events of old ones are dropped
    this.checking = null;    // the generation whose failure is being looked into
    this.timers = new Set();
    this.active = false;     // the transport is up: new subscriptions attach at once
    this.online = null;      // while offline: the wait for the browser's "online" (_whenOnline)
    this.stream = null;      // off WebSocket: the one stream every subscription reads
    this.next = null;        // over SSE: the stream on its way to replace it (_restartStream)
    this.restarting = false; // a reopen of that stream is due once the caller's code has run
    this.position = null;    // that stream's last cursor and the subscriptions it covers
    this.timed = null;       // the generation whose upgrade and refresh timers are set
    // Long polling: the hub keeps the client in the presence of the channels its polls carry,
    // under the id its first poll was given, until the lease of the last poll runs out (its
    // wait and poll.presence_timeout, some 35 s). The client says when it leaves instead
    // (_leavePolls): `polled`, the channels polls carried under that id; `leaving`, those of
    // them unsubscribed, left once no poll carries them.
    this._pollClient = null;
    this.polled = new Set();
    this.leaving = new Set();
    this.hidden = false;     // the page went with its poll stopped (_pageHidden)
    if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
      this.onPageHide = () => this._pageHidden();
      this.onPageShow = (event) => this._pageShown(event);
      window.addEventListener("pagehide", this.onPageHide);
      window.addEventListener("pageshow", this.onPageShow);
    }
    if (typeof options.onState === "function") {
      for (const s of ["connecting", "connected", "disconnected", "closed"]) {
        this.on(s, () => options.onState(s, this.transport));
      }
    }
    if (typeof options.onDisconnect === "function") this.on("disconnected", options.onDisconnect);
    // Connecting starts after the caller's code has run, so that handlers it adds with on()
    // see the first "connecting" too; the state reads "connecting" from here on.
    this.transport = this.order[this.level];
    this.state = "connecting";
    queueMicrotask(() => this._connect());
  }

  // -- public API --

  subscribe(channel, options = {}) {
    if (this.closed) throw closedError();
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    // After the caller's code has run: handlers added with sub.on() see every event.
    queueMicrotask(() => {
      if (this.subs.get(channel) !== sub) return;
      if (this.active) this._attach(sub);
      else sub._subscribing();
    });
    return sub;
  }

  getSubscription(channel) { return this.subs.get(channel) || null; }

  publish(channel, data, options = {}) {
    const command = { channel, data };
    if (options.id !== undefined) command.pub_id = options.id;
    if (options.ephemeral) command.ephemeral = true;
    if (options.key !== undefined) command.key = options.key;
    return this._call("publish", command);
  }

  history(channel, options = {}) {
    const command = { channel };
    for (const key of ["since", "limit", "reverse"]) {
      if (options[key] !== undefined) command[key] = options[key];
    }
    return this._call("history", command);
  }

  presence(channel) { return this._call("presence", { channel }); }

  presenceStats(channel) { return this._call("presence_stats", { channel }); }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.generation++;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.online) this.online.end();
    if (this.ws) { try { this.ws.close(1000); } catch {} this.ws = null; }
    this._stopStream();
    this._leavePolls(true); // after the poll stopped: none renews what the leave ended
    if (this.onPageHide) {
      window.removeEventListener("pagehide", this.onPageHide);
      window.removeEventListener("pageshow", this.onPageShow);
    }
    this._failPending(closedError());
    // Every subscription ends with the client, as after unsubscribe().
    for (const sub of [...this.subs.values()]) {
      this.subs.delete(sub.channel);
      sub._ended("client");
    }
    this._setState("closed");
  }

  // -- state --

  _setState(state, detail = {}) {
    this.state = state;
    this.emit(state, { transport: this.transport, ...detail });
    this.emit("state", state, this.transport);
  }

  _stored(channel) {
    if (!this.store) return null;
    try { return this.store.get(this.storePrefix + channel) || null; } catch { return null; }
  }

  _store(channel, cursor) {
    if (!this.store) return;
    try { this.store.set(this.storePrefix + channel, cursor); } catch {}
  }

  // Resolves once the browser is back online (or the client closes): one wait, shared.
  _whenOnline() {
    if (!this.online) {
      let end;
      const wait = new Promise((ok) => { end = ok; });
      const back = () => {
        removeEventListener("online", back);
        this.online = null;
        end();
      };
      addEventListener("online", back);
      this.online = { wait, end: back };
    }
    return this.online.wait;
  }

  _later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  _cancel(t) {
    clearTimeout(t);
    this.timers.delete(t);
  }

  async _freshToken() {
    if (!this.getToken) return null;
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new ClarionError({ code: "timeout",
        message: `getToken() did not settle within ${this.tokenTimeout} ms` })), this.tokenTimeout);
    });
    try {
      const token = await Promise.race([this.getToken(), late]);
      this.token = token || null;
    } finally {
      clearTimeout(timer);
    }
    this.tokenExpires = tokenExpiry(this.token);
    return this.token;
  }

  // -- connecting and falling back --

  async _connect() {
    if (this.closed) return;
    if (offline()) {
      // No try while the browser has no network; once it is back, a short random wait, so
      // that the pages of a network that comes back together do not all come at once.
      const before = this.generation;
      await this._whenOnline();
      await sleep(backoffDelay(0, this.base, this.cap));
      if (this.closed || this.generation !== before) return; // closed, or connected otherwise
    }
    const gen = ++this.generation;
    this.transport = this.order[this.level];
    this._setState("connecting");
    try {
      await this._freshToken();
    } catch (error) {
      if (gen !== this.generation) return;
      this.emit("error", error);
      return this._retry(gen, { code: null, reason: "getToken failed" });
    }
    if (gen !== this.generation || this.closed) return;
    if (this.transport === "ws") this._openWebSocket(gen);
    else this._openHttp(gen);
  }

  // A transport failed. Does it fail while the hub answers (a proxy that refuses upgrades, a
  // buffering proxy)? Then step down. Otherwise the hub was down: retry the same, later.
  async _failed(gen, detail) {
    if (gen !== this.generation || this.closed || this.checking === gen) return;
    // Offline, the transport is not what failed: no check (it would fail too), retry once back.
    if (offline()) return this._retry(gen, detail);
    this.checking = gen; // the streams of one connection fail together: one check for all
    const broken = this.level + 1 < this.order.length && await this._broken(gen);
    if (gen !== this.generation || this.closed) return;
    if (broken) {
      this.level++;
      this._lost(gen, detail);
      this.attempt = 0;
      this._connect();
      return;
    }
    this._retry(gen, detail);
  }

  // The hub answers its health check, and then the transport, tried once more, still fails. An
  // answer alone proves nothing of the failure before it: a hub that restarts fails the
  // transport while it is down and answers the health check once it is back.
  async _broken(gen) {
    if (!(await this._reachable())) return false;
    if (gen !== this.generation || this.closed) return false;
    return !(await this._probe(this.transport));
  }

  // Whether the hub answers. Its own health reply (JSON with a status, 503 included while its
  // engine is away) says yes; a gateway's error page for it (502, 503, 504 without that JSON)
  // says it is down. Anything else that answers — a page another server gives, an answer this
  // page may not read (a proxy that does not pass /healthz, or adds its own CORS) — is taken as
  // the hub being up behind it, as the fallback has always taken it.
  async _reachable() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.openTimeout);
    const ask = (mode) => fetch(this.urls.healthz, { mode, cache: "no-store", signal: controller.signal });
    try {
      let r;
      try {
        r = await ask("cors");
      } catch {
        await ask("no-cors"); // throws when nothing answers at all
        return true;
      }
      const body = await r.json().catch(() => null);
      if (typeof body?.status === "string") return true;
      return !(r.status === 502 || r.status === 503 || r.status === 504);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  _lost(gen, detail) {
    this.active = false;
    if (this.state === "connected" || this.state === "connecting") {
      for (const sub of this.subs.values()) if (sub.state === "subscribed") sub._subscribing();
      this._setState("disconnected", { code: null, reason: "", reconnect: true, ...detail });
    }
  }

  _retry(gen, detail) {
    if (gen !== this.generation || this.closed) return;
    this._lost(gen, detail);
    this.generation++;
    // Offline, the network's return is the signal to try again, not the backoff's timer.
    if (offline()) return void this._connect();
    const delay = backoffDelay(this.attempt++, this.base, this.cap);
    this._later(() => this._connect(), delay);
  }

  _stop(gen, detail) {
    // The hub said not to come back (4500–4999): every subscription ends.
    if (gen !== this.generation) return;
    this._lost(gen, { ...detail, reconnect: false });
    this._stopStream();
    for (const sub of [...this.subs.values()]) {
      this.subs.delete(sub.channel);
      sub._ended(detail.reason || "disconnected");
    }
    this.close();
  }

  _connected(gen, attach = true) {
    this.attempt = 0;
    this.active = true;
    // An event stream's position from before would soon be behind the subscriptions' own.
    if (this.transport === "ws") this.position = null;
    this._setState("connected");
    if (attach) for (const sub of this.subs.values()) this._attach(sub);
    // An event stream that stalled and came back is connected again in the same generation:
    // its timers run already.
    if (this.timed === gen) return;
    this.timed = gen;
    if (this.level > 0) this._scheduleUpgrade(gen);
    this._scheduleRefresh(gen);
  }

  // Every upgradeInterval, see whether a better transport works again; switch when it does.
  _scheduleUpgrade(gen) {
    if (!this.upgradeInterval) return;
    this._later(async () => {
      if (gen !== this.generation || this.closed || this.level === 0) return;
      if (offline()) return this._scheduleUpgrade(gen); // a probe now proves nothing
      const better = this.order[0];
      const works = await this._probe(better);
      if (gen !== this.generation || this.closed) return;
      if (!works) return this._scheduleUpgrade(gen);
      this._teardown();
      // Off polling: its client leaves presence now, the new connection joins in its place.
      this._leavePolls(true);
      this.level = 0;
      this._lost(gen, { reason: `moving to ${better}` });
      this._connect();
    }, this.upgradeInterval);
  }

  // Whether the hub answers over `transport`: a WebSocket answers a ping (an open socket alone
  // may be a proxy's that speaks no protocol), an event stream starts, a poll replies.
  async _probe(transport) {
    if (transport === "ws") {
      return new Promise((ok) => {
        let ws;
        try { ws = new WebSocket(this.urls.ws, SUBPROTOCOL); } catch { return ok(false); }
        const timer = setTimeout(() => done(false), this.openTimeout);
        const done = (v) => {
          clearTimeout(timer);
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          try { ws.close(1000); } catch {}
          ok(v);
        };
        ws.onopen = () => ws.send(JSON.stringify({ id: 1, op: "ping" }));
        ws.onmessage = (event) => { try { done(JSON.parse(event.data).id === 1); } catch { done(false); } };
        ws.onerror = ws.onclose = () => done(false);
      });
    }
    const channel = this.subs.keys().next().value;
    if (!channel) return false;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 10000);
    try {
      const q = new URLSearchParams({ channel });
      if (transport === "poll") q.set("timeout", "0");
      const r = await fetch(`${this.urls[transport]}?${q}`, {
        headers: this._headers(), signal: controller.signal, cache: "no-store",
      });
      const ok = r.ok && (transport === "poll" || (r.headers.get("content-type") || "").startsWith("text/event-stream"));
      controller.abort();
      return ok;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  _teardown() {
    this.generation++;
    this.active = false;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.onclose = null; try { ws.close(1000); } catch {} }
    this._stopStream();
    this._failPending(new Error("connection lost"));
  }

  // Ask for a new token before this one expires: a refresh op on an open WebSocket; over SSE
  // and poll the next request carries it.
  // `failures`: refreshes that failed in a row, retried with the client's backoff.
  _scheduleRefresh(gen, failures = 0) {
    if (!this.getToken || !this.tokenExpires) return;
    const delay = failures ? backoffDelay(failures - 1, this.base, this.cap) : refreshDelay(this.tokenExpires);
    this._later(async () => {
      if (gen !== this.generation || this.closed) return;
      let failed = false;
      try {
        const before = this.token;
        await this._freshToken();
        if (gen !== this.generation || this.closed) return;
        if (this.transport === "ws" && this.token && this.token !== before) {
          const ok = await this._wsRequest({ op: "refresh", token: this.token });
          if (ok.expires) this.tokenExpires = ok.expires;
        }
      } catch (error) {
        this.emit("error", error);
        failed = true;
      }
      if (gen === this.generation) this._scheduleRefresh(gen, failed ? failures + 1 : 0);
    }, Math.max(500, delay)); // a getToken() that keeps giving the old token is not asked in a loop
  }

  // -- WebSocket --

  _openWebSocket(gen) {
    let ws;
    try { ws = new WebSocket(this.urls.ws, SUBPROTOCOL); } catch (error) {
      return this._failed(gen, { reason: String(error) });
    }
    this.ws = ws;
    let opened = false;
    let disconnect = null;
    // Something that accepts the upgrade but never speaks the protocol is no WebSocket to use.
    const timer = this._later(() => { if (!opened) try { ws.close(); } catch {} }, this.openTimeout);
    ws.onopen = async () => {
      if (gen !== this.generation) return;
      try {
        // The token goes in the connect op, never in the URL.
        const ok = await this._wsRequest({ op: "connect", ...(this.token ? { token: this.token } : {}) });
        if (gen !== this.generation) return;
        opened = true;
        this._cancel(timer);
        this.clientId = ok.client;
        this.user = ok.user;
        if (ok.expires) this.tokenExpires = ok.expires;
        this._connected(gen);
        this._watchWebSocket(gen, ws);
      } catch (error) {
        if (gen !== this.generation || !(error instanceof ClarionError)) return;
        opened = true;
        this._cancel(timer);
        this.emit("error", error);
        const what = refusal(error.code, { refreshable: this.refreshable, whole: true });
        const detail = { code: errorRule(error.code).close, reason: error.message };
        if (what === "stop") {
          this._stop(gen, detail);
        } else {
          if (what === "refresh") this.attempt = 0; // a new token is all it needs
          this._retry(gen, { ...detail, reconnect: true });
        }
        ws.onclose = null;
        try { ws.close(1000); } catch {}
      }
    };
    ws.onmessage = (event) => {
      if (gen !== this.generation) return;
      this.heard = Date.now();
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg.disconnect) disconnect = msg.disconnect;
      this._onFrame(msg);
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.ws = null;
      if (gen !== this.generation || this.closed) return;
      this._failPending(new Error("connection lost"));
      const code = disconnect?.code ?? event.code;
      const ends = endsClient(code, disconnect?.reconnect, this.refreshable);
      const detail = { code, reason: disconnect?.reason ?? event.reason, reconnect: !ends };
      // Closed before the connect reply by the hub itself (its disconnect push, a close code of
      // its own): the transport works, so the code decides, as on an open connection.
      const byHub = disconnect !== null || (code >= 4000 && code <= 4999);
      if (!opened && !byHub) return this._failed(gen, detail);
      if (ends) return this._stop(gen, detail);
      if (code === TOKEN_EXPIRED) this.attempt = 0; // a new token is all it needs
      this._retry(gen, detail);
    };
  }

  // `wait`: ms until the call rejects with code "timeout" (0: it waits for the connection's end;
  // subscribe and connect are held to the connection, not to a deadline). A connection lost
  // rejects with a plain Error: no refusal of the hub's (a ClarionError) for connect and
  // subscribe, which the next connection makes again; _call gives callers its code.
  _wsRequest(command, wait = 0) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(new Error("not connected"));
    const id = this.nextId++;
    const frame = JSON.stringify({ id, ...command });
    // Refused here, as the hub would refuse it over HTTP: over WebSocket it would close the
    // connection for good (1009), ending every subscription.
    const size = frameBytes(frame, this.maxMessageBytes);
    if (size > this.maxMessageBytes) {
      const limit = this.maxMessageBytes;
      return Promise.reject(new ClarionError({ code: "too_large", limit,
        message: `the ${command.op} frame is ${size} bytes, over maxMessageBytes (${limit})` }));
    }
    ws.send(frame);
    return new Promise((resolve, reject) => {
      const timer = wait ? this._later(() => {
        this.pending.delete(id);
        reject(timeoutError(command.op, wait));
      }, wait) : null;
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  _failPending(error) {
    for (const { reject, timer } of this.pending.values()) {
      if (timer !== null) this._cancel(timer);
      reject(error);
    }
    this.pending.clear();
  }

  // Nothing else shows that a quiet WebSocket still reaches the hub: the browser answers the
  // hub's own pings out of sight, and a connection that died without closing never closes.
  _watchWebSocket(gen, ws) {
    if (!this.pingInterval) return;
    this.heard = Date.now();
    const check = () => {
      if (gen !== this.generation || this.ws !== ws || this.closed) return;
      const quiet = Date.now() - this.heard;
      if (quiet < this.pingInterval) return void this._later(check, this.pingInterval - quiet);
      this._wsRequest({ op: "ping" }, this.pongTimeout).then(
        () => this._later(check, this.pingInterval),
        (error) => {
          if (gen !== this.generation || this.ws !== ws || error.code !== "timeout") return;
          // Dead: what its close would do, for a close that will not come.
          ws.onclose = ws.onmessage = null;
          try { ws.close(1000); } catch {}
          this.ws = null;
          this._failPending(new Error("connection lost"));
          this._retry(gen, { code: null, reason: `no answer to a ping within ${this.pongTimeout} ms`,
            reconnect: true });
        },
      );
    };
    this._later(check, this.pingInterval);
  }

  _onFrame(msg) {
    if (msg.id !== undefined && msg.id !== null && this.pending.has(msg.id)) {
      const { resolve, reject, timer } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (timer !== null) this._cancel(timer);
      if (msg.error) reject(new ClarionError(msg.error));
      else resolve(msg.ok);
      return;
    }
    if (msg.reset) return this.subs.get(msg.reset.channel)?._reset(msg.reset);
    if (msg.join) return this.subs.get(msg.join.channel)?.emit("join", msg.join);
    if (msg.leave) return this.subs.get(msg.leave.channel)?.emit("leave", msg.leave);
    if (msg.subscribe) return this._serverSubscribed(msg.subscribe);
    if (msg.unsubscribe) return this._serverUnsubscribed(msg.unsubscribe);
    if (msg.disconnect) return;
    if (msg.channel !== undefined && (msg.offset !== undefined || msg.ephemeral === true)) {
      this.subs.get(msg.channel)?._deliver(msg);
    }
  }

  _serverSubscribed(ok) {
    let sub = this.subs.get(ok.channel);
    if (!sub) {
      sub = new Subscription(this, ok.channel, {});
      sub.server = true;
      this.subs.set(ok.channel, sub);
      this.emit("subscription", sub);
    }
    // With `reset`, the reset itself follows (a push, an event), as for a subscribe reply.
    sub._subscribed(ok);
    return sub;
  }

  _serverUnsubscribed({ channel, reason }) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel); // the hub took it off the stream, which goes on with the others
    this.position?.subs?.delete(sub);
    if (!this.subs.size && this.transport !== "ws") this._stopStream();
    // Any reason but the backend's is a refusal of the channel (a token that no longer allows
    // it, a server-side subscription that could not be made): told as a refused subscribe is,
    // and as an event stream that reopens without the permission tells it.
    if (reason !== "server") {
      const message = reason === "forbidden" ? `the token no longer allows ${channel}`
        : `the hub ended the subscription to ${channel}: ${reason}`;
      sub.emit("error", new ClarionError({ code: reason, channel, message }));
    }
    sub._ended(reason);
  }

  _attach(sub) {
    // Once per connection: a subscribe() from a handler that runs while _connected attaches
    // every subscription (connected, state, subscribing) finds its own attached already, and a
    // second subscribe op would be refused (already_subscribed) while the hub keeps the first.
    if (sub.attachedTo === this.generation) return;
    sub.attachedTo = this.generation;
    sub._subscribing();
    if (this.transport === "ws") this._wsSubscribe(sub);
    else this._restartStream();
  }

  _wsSubscribe(sub) {
    const gen = this.generation;
    const command = { op: "subscribe", channel: sub.channel };
    // From an event stream: a subscription that had no publication yet is where it opened.
    const since = sub.cursor || sub.streamCursor;
    if (since) command.since = since;
    else if (sub.latest) command.latest = true;
    this._wsRequest(command).then(
      (ok) => {
        if (gen !== this.generation || this.subs.get(sub.channel) !== sub) return;
        // A reply with `reset` is followed by the reset itself, which is what moves it on.
        sub._subscribed(ok, Boolean(since) && ok.recovered !== false);
      },
      (error) => {
        if (gen !== this.generation || this.subs.get(sub.channel) !== sub) return;
        if (error instanceof ClarionError) {
          if (error.code === "bad_cursor" && since) { sub._forget(); return this._wsSubscribe(sub); }
          if (error.code === "rate_limited") {
            // A budget is spent for now (the connection's, or its user's, which says when it
            // has room again): ask again then, on this connection (a new one resubscribes
            // everything anyway).
            const delay = error.retryAfter ? retryAfterDelay(error.retryAfter) : 500 + Math.random() * 1000;
            return this._later(() => {
              if (gen === this.generation && this.subs.get(sub.channel) === sub) this._wsSubscribe(sub);
            }, delay);
          }
          this.subs.delete(sub.channel);
          sub.emit("error", error);
          sub._ended(error.code);
        }
      },
    );
  }

  _unsubscribe(sub) {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    if (this.polled.has(sub.channel)) this.leaving.add(sub.channel);
    if (this.transport === "ws") {
      if (this.ws && this.ws.readyState === 1) {
        this._wsRequest({ op: "unsubscribe", channel: sub.channel }).catch(() => {});
      }
    } else if (this.active) {
      this._restartStream(); // the stream, without it
    }
    // A poll loop leaves once it is reopened without the channel (_restartStream); with none
    // running, at once.
    if (this.transport !== "poll" || !this.active) this._leavePolls();
  }

  // Out of the presence of channels that polls carried, now rather than when the lease of the
  // last one runs out: `DELETE /poll?channel=…&client=<id>`, fire and forget (lost, the lease
  // still ends). Called once no poll carries them, so that none renews what it ended. `all`:
  // every channel polls carried (the client or its page goes), else those unsubscribed and not
  // subscribed again since. keepalive: the request outlives a page that is going.
  _leavePolls(all = false) {
    const client = this._pollClient;
    if (!client) return; // no poll answered yet: kept for a later call, once one is
    const channels = all ? [...this.polled] : [...this.leaving].filter((c) => !this.subs.has(c));
    this.leaving.clear();
    for (const channel of channels) this.polled.delete(channel);
    if (!channels.length) return;
    const headers = this._headers();
    for (let i = 0; i < channels.length;) {
      // Whatever the number of channels, a URL far below the 8 KB of a request line that
      // proxies take by default (nginx's large_client_header_buffers).
      const q = new URLSearchParams();
      do q.append("channel", channels[i++]); while (i < channels.length && q.toString().length < LEAVE_QUERY_CHARS);
      q.set("client", client);
      fetch(`${this.urls.poll}?${q}`, { method: "DELETE", headers, keepalive: true, cache: "no-store" })
        .catch(() => {});
    }
  }

  // The page goes (closed, navigated away from, or into the back/forward cache): its poll ends
  // with it, and its client would stay in presence until the lease ran out. The poll stops
  // first, then it leaves; a page restored from the cache polls again, and joins again.
  _pageHidden() {
    if (this.closed || !this.polled.size) return;
    if (this.transport === "poll" && this.stream) {
      this._stopStream();
      this.hidden = true;
    }
    this._leavePolls(true);
  }

  _pageShown(event) {
    if (!event.persisted || !this.hidden) return;
    this.hidden = false;
    this._restartStream();
  }

  // -- publish, history, presence --

  async _call(op, command) {
    // Closed — by close(), or by the hub with a code that says not to come back (a fixed token
    // that expired): nothing more is asked of the hub, as nothing more is subscribed.
    if (this.closed) throw closedError();
    if (this.transport === "ws" && this.state === "connected" && this.ws?.readyState === 1) {
      return this._wsRequest({ op, ...command }, this.requestTimeout).catch((error) => {
        throw error instanceof ClarionError ? error : lostError(error);
      });
    }
    // Off WebSocket: the hub's client endpoints, with the same token and permissions. Before
    // the first connection (or while getToken() is asked) there is no token yet: ask for one.
    let token = this.token;
    if (token === null && this.getToken) token = await this._freshToken();
    for (let round = 0; ; round++) {
      const headers = this._headers(token);
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.requestTimeout);
      const init = { headers, cache: "no-store", signal: controller.signal };
      let r;
      let body;
      try {
        if (op === "publish") {
          headers["content-type"] = "application/json";
          r = await fetch(this.urls.publish, { ...init, method: "POST", body: JSON.stringify(command) });
        } else {
          const q = new URLSearchParams();
          for (const [k, v] of Object.entries(command)) q.set(k, String(v));
          r = await fetch(`${this.urls[op]}?${q}`, init);
        }
        body = await r.json().catch(() => ({ error: { code: "http_error", message: `HTTP ${r.status}` } }));
      } catch (error) {
        // Sent or not, carried out or not: the caller cannot know, as for a connection lost.
        throw controller.signal.aborted ? timeoutError(op, this.requestTimeout) : lostError(error);
      } finally {
        clearTimeout(timer);
      }
      if (r.ok) return body;
      if (body.error?.code === "token_expired" && this.getToken && round === 0) {
        token = await this._freshToken();
        continue;
      }
      throw new ClarionError(body.error, r.status);
    }
  }

  _headers(token = this.token) {
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  // -- SSE and poll: one stream for every subscription --
  //
  // A browser opens at most six HTTP/1.1 connections to one host: a stream per subscription
  // would leave a page with six subscriptions no connection for a seventh, nor for publish. All
  // of a client's subscriptions share one stream (`/sse` or a long-poll loop on `/poll`, with a
  // `channel` for each), reopened from where it was whenever they change. Where it was: the
  // stream's own cursor (each SSE `id:`, each poll reply's `cursor`: one cursor for all its
  // channels) for the subscriptions it read, then the cursors of the others; the hub merges
  // them, the later one winning. A subscription's own cursor is always of its channel alone (a
  // publication's, a reset's, `since`); one without publications has the cursor its stream
  // opened at, the same for all of them, so that a query holds each position about once.
  //
  // An event stream is replaced make-before-break: the new one is asked beside the old, which
  // goes on delivering until the new one has opened (its first `id:`), and only then is cut.
  // The new one starts from where the old one was when it was asked, so what the old one
  // delivered in between comes again, and is dropped by offset (Subscription._deliver). A
  // change while the new one is on its way does not cut it either: once it has opened, the
  // next one is asked. So there are at most two streams, one of them opening, and
  // subscriptions that change faster than the hub answers starve no channel.

  _openHttp(gen) {
    // Connected once the stream opens (at once when there is nothing to read).
    this.active = true;
    if (!this.subs.size) return this._connected(gen, false);
    for (const sub of this.subs.values()) sub._subscribing();
    this._restartStream();
  }

  // Reopen the stream with the subscriptions as they are once the caller's code has run: a
  // page that subscribes to ten channels in a row opens one stream, not ten.
  _restartStream() {
    if (this.restarting) return;
    this.restarting = true;
    queueMicrotask(() => {
      this.restarting = false;
      if (this.closed || !this.active || this.transport === "ws") return void this._leavePolls();
      const current = this.stream;
      const same = current && !current.stopped && current.gen === this.generation;
      if (this.transport === "poll" && same && !current.opened && this.subs.size) {
        // A poll cut before its first reply would have read nothing: subscriptions that change
        // faster than the hub answers would starve every channel of the loop. That reply (at
        // once: asked with timeout=0) comes first, then the new loop (_streamOpened), and the
        // leaves of the channels it carried that are gone.
        current.reopen = true;
        return;
      }
      if (this.transport === "sse" && same && current.asking && this.subs.size) {
        // Make before break: the stream that reads (or is opening) goes on until its
        // replacement has opened. One on its way already opens first, then the next.
        if (this.next) this.next.reopen = true;
        else this._startStream(true);
        return;
      }
      this._stopStream();
      this._leavePolls(); // what the stopped poll carried and the next one does not
      if (!this.subs.size) {
        if (this.state !== "connected") this._connected(this.generation, false);
        return;
      }
      this._startStream(false);
    });
  }

  // A stream of the subscriptions as they are; `beside`: an event stream that replaces the
  // current one once it opens (this.next), else the client's stream at once.
  _startStream(beside) {
    const stream = { stopped: false, controller: null, gen: this.generation, subs: null, takeover: null };
    stream.stop = () => {
      stream.stopped = true;
      clearTimeout(stream.takeover);
      stream.controller?.abort();
    };
    if (beside) {
      this.next = stream;
      const delay = Math.min(this.openTimeout, TAKEOVER_DELAY);
      stream.takeover = setTimeout(() => { if (this.next === stream) this._promote(stream); }, delay);
    } else {
      this.stream = stream;
    }
    (this.transport === "sse" ? this._sseLoop(stream) : this._pollLoop(stream)).catch(
      (error) => console.error("clarion: stream failed", error),
    );
  }

  // The replacement on its way becomes the client's stream; the one it replaces is cut.
  _promote(stream) {
    clearTimeout(stream.takeover);
    if (this.next !== stream) return;
    this.next = null;
    if (this.stream && this.stream !== stream) this.stream.stop();
    this.stream = stream;
  }

  // `stream` cannot read on: it failed, ended, or was refused. With a replacement on its way,
  // that one takes over: true when `stream` was the one it replaces, which has nothing more to
  // do; false when `stream` is (now) the client's stream, which deals with what happened.
  _handOver(stream) {
    const next = this.next;
    if (!next) return false;
    this._promote(next);
    return next !== stream;
  }

  _stopStream() {
    if (this.next) this.next.stop();
    if (this.stream) this.stream.stop();
    this.next = null;
    this.stream = null;
  }

  // Whether `stream` is still one to read (the client's, or its replacement on its way); false
  // also when no subscription is left.
  _live(stream) {
    if (stream.stopped || this.closed || stream.gen !== this.generation) return false;
    if (this.stream !== stream && this.next !== stream) return false;
    if (this.subs.size) return true;
    this._stopStream();
    return false;
  }

  // The subscription that `stream` reads `channel` for: the client's, if the stream was opened
  // with it (or the hub added it); not one made since on the same channel, which starts
  // elsewhere (from now, or from its own cursor) and waits for a stream of its own.
  _readBy(stream, channel) {
    const sub = this.subs.get(channel);
    return sub && stream.subs.has(sub) ? sub : undefined;
  }

  // The stream is on: the client is connected, and its subscriptions that were waiting for it
  // are subscribed. `cursor`: where it opened (a reopening, not each poll), where those without
  // publications are. `resets`: the channels whose history could not cover their gap (their
  // reset comes next). `known(sub)`: whether the hub has said yet whether it recovered; one it
  // has not stays subscribing.
  _streamOpened(stream, cursor, resets, known = () => true) {
    stream.opened = true;
    if (stream.reopen && this.stream === stream) {
      stream.reopen = false;
      // After this reply is handled: the subscriptions changed while it was asked.
      queueMicrotask(() => this._restartStream());
    }
    if (stream.gen === this.generation && this.state !== "connected") this._connected(stream.gen, false);
    for (const sub of stream.subs) {
      if (this.subs.get(sub.channel) !== sub) continue;
      if (cursor && !sub.cursor) sub._openedAt(cursor);
      if (sub.state === "subscribed") continue;
      const reset = resets.has(sub.channel);
      if (reset || known(sub)) sub._subscribed({ recovered: !reset });
    }
  }

  // The stream's position, `cursor`: it covers the subscriptions it was opened with and those
  // the hub added since (`stream.subs`).
  _streamAt(stream, cursor) {
    if (!cursor) return;
    this.position = { cursor, subs: stream.subs };
    // What the stream left out (_streamQuery) can start from now on the next one.
    if (stream.deferred) {
      stream.deferred = false;
      this._restartStream();
    }
  }

  _covered(sub) {
    return Boolean(this.position?.subs.has(sub));
  }

  // The query that opens the stream: a `channel` for each subscription, then cursors from the
  // oldest to the newest, as the hub takes the later one for a channel that several hold: where
  // the streams of the subscriptions it does not cover opened (of several channels, some of
  // them further on since), the stream's own (each of its channels where it is now), and the
  // own cursors of the subscriptions it does not cover. `latest` names the channels that ask
  // for it and have no position.
  _streamQuery(stream) {
    let subs = [...this.subs.values()];
    // A subscription from now on a channel the stream's position still holds (one ended and
    // made again before the stream read anew) would resume there, from before it was made. It
    // waits for the next opening: this one's position holds only the channels it reads.
    const gone = new Set();
    for (const sub of this.position?.subs || []) if (this.subs.get(sub.channel) !== sub) gone.add(sub.channel);
    const later = subs.filter((sub) => gone.has(sub.channel) && !sub.cursor && !sub.streamCursor);
    stream.deferred = later.length > 0 && subs.some((sub) => this._covered(sub));
    if (stream.deferred) subs = subs.filter((sub) => !later.includes(sub));
    stream.subs = new Set(subs);
    const q = new URLSearchParams();
    for (const sub of subs) q.append("channel", sub.channel);
    const others = subs.filter((sub) => !this._covered(sub));
    const cursors = new Set();
    for (const sub of others) if (!sub.cursor && sub.streamCursor) cursors.add(sub.streamCursor);
    if (others.length < subs.length) cursors.add(this.position.cursor);
    for (const sub of others) if (sub.cursor) cursors.add(sub.cursor);
    for (const cursor of cursors) q.append("cursor", cursor);
    for (const sub of others) if (sub.latest && !sub.cursor && !sub.streamCursor) q.append("latest", sub.channel);
    return q;
  }

  // A replacement refused over a cap (of one address's or user's connections) that the stream it
  // replaces counted for: that one is cut now (_handOver), and the same request goes again, as
  // the only stream, once the hub has let it go. A busy hub notices the cut a little later: a
  // few tries, each waiting longer. Whether to try again (after the wait).
  async _cappedAgain(stream, beside) {
    if (!beside && !stream.capped) return false;
    stream.capped = (stream.capped || 0) + 1;
    if (stream.capped >= CAPPED_TRIES) return false;
    await sleep(Math.min(this.base * 2 ** (stream.capped - 1), this.cap));
    return true;
  }

  // An HTTP answer that is not the stream: a clarion error (JSON) is the hub speaking; anything
  // else (a proxy's page, a refused request) means this transport does not work here.
  // `beside`: the request was made beside the stream it replaces (_sseLoop).
  async _httpError(stream, r, beside = false) {
    let body = null;
    try { body = await r.json(); } catch {}
    if (!this._live(stream)) return "ended"; // the subscriptions changed meanwhile
    const error = body?.error?.code ? new ClarionError(body.error, r.status) : null;
    if (!error) return this._failed(stream.gen, { reason: `HTTP ${r.status}` });
    if (error.code === "bad_cursor" && this._dropCursor(error.cursor)) return "again";
    if (error.code === "too_many_connections" && (await this._cappedAgain(stream, beside))) {
      return this._live(stream) ? "again" : "ended";
    }
    // The hub allows shorter polls than asked for: a matter of this client's, not of its
    // subscriptions.
    if (error.code === "bad_timeout" && this._shorterPolls()) return "again";
    const what = refusal(error.code, { status: r.status, refreshable: this.refreshable });
    if (what === "refresh") {
      // Once at once; a token that is refused again, or a getToken() that fails, backs off.
      const again = stream.refreshed;
      stream.refreshed = true;
      try { await this._freshToken(); } catch (failure) { this.emit("error", failure); return "backoff"; }
      return again ? "backoff" : "again";
    }
    if (what === "backoff") {
      // Over a rate limit: not before the wait it names (`Retry-After`), however few the tries.
      const header = Number(r.headers.get("retry-after"));
      const wait = error.retryAfter || (Number.isFinite(header) && header > 0 ? header : 0);
      if (wait) stream.retryAfter = wait;
      return "backoff";
    }
    if (what === "stop") {
      this._stop(stream.gen, { code: errorRule(error.code, r.status).close, reason: error.message });
      return "ended";
    }
    // A refusal of one channel ends that subscription; the stream goes on with the others. One
    // that names no channel is the request's: every subscription in it ends.
    let refused = [...stream.subs].filter((sub) => this.subs.get(sub.channel) === sub);
    if (error.channel !== undefined) refused = refused.filter((sub) => sub.channel === error.channel);
    // Over the hub's cap of channels per request: the newest subscriptions, as on WebSocket.
    if (error.code === "too_many_channels" && error.limit > 0) refused = refused.slice(error.limit);
    if (!refused.length) return "backoff"; // none of ours: not the same request again at once
    for (const sub of refused) {
      this.subs.delete(sub.channel);
      sub.emit("error", error);
      sub._ended(error.code);
    }
    if (this.subs.size) return "again";
    if (this.state !== "connected") this._connected(stream.gen, false); // the hub answered
    return "ended";
  }

  // The hub could not read `bad`, a cursor of the query (or one of them, when it does not
  // say): its channels start from now. False when there is no cursor left to drop.
  _dropCursor(bad) {
    let dropped = false;
    if (this.position && (bad === undefined || bad === this.position.cursor)) {
      this.position = null;
      dropped = true;
    }
    for (const sub of this.subs.values()) {
      if (sub.streamCursor && (bad === undefined ? !dropped : sub.streamCursor === bad)) {
        sub._openedAt(null);
        dropped = true;
      }
    }
    for (const sub of this.subs.values()) {
      if (sub.cursor && (bad === undefined ? !dropped : sub.cursor === bad)) {
        sub._dropOwn();
        dropped = true;
      }
    }
    return dropped;
  }

  // A long poll the hub refused as too long: ask for less from now on. False when the
  // client already asks for none.
  _shorterPolls() {
    if (!this.pollTimeout) return false;
    this.pollTimeout = this.pollTimeout > FALLBACK_POLL_TIMEOUT ? FALLBACK_POLL_TIMEOUT : 0;
    return true;
  }

  // The stream is not reading and waits (`attempt`'s backoff) before it tries again: told as a
  // WebSocket tells its drop, the client disconnected and its subscriptions subscribing, then
  // connecting as it tries; it is connected again once the stream is on.
  async _stall(stream, attempt, detail = {}) {
    if (this._live(stream)) {
      for (const sub of this.subs.values()) if (sub.state === "subscribed") sub._subscribing();
      if (this.state === "connected" || this.state === "connecting") {
        this._setState("disconnected", { code: null, reason: "", reconnect: true, ...detail });
      }
    }
    const wait = stream.retryAfter ? retryAfterDelay(stream.retryAfter) : 0;
    stream.retryAfter = 0;
    await sleep(Math.max(wait, backoffDelay(attempt, this.base, this.cap)));
    if (this._live(stream) && this.state === "disconnected") this._setState("connecting");
  }

  // An expired token ended the stream: it opens again at once with a fresh one, or, when
  // getToken fails, after a wait.
  async _renewToken(stream, attempt, detail) {
    try {
      await this._freshToken();
      return attempt;
    } catch (error) {
      if (!this._live(stream)) return attempt;
      this.emit("error", error);
      await this._stall(stream, attempt, detail);
      return attempt + 1;
    }
  }

  async _sseLoop(stream) {
    let attempt = 0;
    while (this._live(stream)) {
      if (offline()) {
        if (this._handOver(stream)) return;
        return this._failed(stream.gen, { reason: "the browser is offline" });
      }
      stream.controller = new AbortController();
      stream.asking = true; // false while it waits to try again: a change then reopens at once
      stream.reopen = false; // this request is of the subscriptions as they are now
      // Asked beside the stream it replaces, which the hub counts too: a refusal for the
      // connections of one address or user (too_many_connections) may be that one's doing.
      const beside = this.next === stream;
      const q = this._streamQuery(stream);
      const headers = { ...this._headers(), accept: "text/event-stream" };
      let disconnect = null;
      let r;
      try {
        r = await fetch(`${this.urls.sse}?${q}`, { headers, signal: stream.controller.signal, cache: "no-store" });
      } catch (error) {
        if (!this._live(stream) || this._handOver(stream)) return;
        return this._failed(stream.gen, { reason: String(error) });
      }
      if (!this._live(stream)) return void stream.controller.abort();
      if (!r.ok || !(r.headers.get("content-type") || "").startsWith("text/event-stream")) {
        if (this._handOver(stream)) return void stream.controller.abort();
        const what = await this._httpError(stream, r, beside);
        if (what === "again") continue;
        stream.asking = false;
        if (what === "backoff") { await this._stall(stream, attempt++, { reason: `HTTP ${r.status}` }); continue; }
        if (what === "ended" && this.stream === stream) this.stream = null;
        return;
      }
      let opened = false;
      // The opening block names, before its id, each channel that did not recover.
      const resets = new Set();
      // Until it has opened, a replacement reads nothing: the stream it replaces delivers.
      const reads = () => this._live(stream) && this.stream === stream;
      const parser = new SseParser({
        onComment: (text) => {
          const [word, channel] = text.trim().split(" ");
          if (!opened && word === "reset" && channel) resets.add(channel);
        },
        onId: (id) => {
          if (!this._live(stream)) return;
          // The opening block's id: a replacement takes the place of the stream it replaces.
          if (!opened && id && this.next === stream) this._promote(stream);
          if (!reads()) return;
          this._streamAt(stream, id);
          // The opening block's id: the stream is on, from this position.
          if (!opened && id) {
            opened = true;
            attempt = 0;
            stream.refreshed = false;
            stream.capped = 0;
            this._streamOpened(stream, id, resets);
          }
        },
        onEvent: (event) => {
          if (!reads()) return;
          let data;
          try { data = JSON.parse(event.data); } catch { return; }
          if (event.type === "message") this._readBy(stream, data.channel)?._deliver(data);
          else if (event.type === "reset") this._readBy(stream, data.channel)?._reset(data);
          else if (event.type === "join" || event.type === "leave") this._readBy(stream, data.channel)?.emit(event.type, data);
          else if (event.type === "subscribe") stream.subs.add(this._serverSubscribed(data));
          else if (event.type === "unsubscribe") this._serverUnsubscribed(data);
          else if (event.type === "disconnect") disconnect = data;
          // The hub changed what this stream reads: a replacement on its way was asked
          // without that change, and the next one is asked once it opens.
          if ((event.type === "subscribe" || event.type === "unsubscribe") && this.next) this._restartStream();
        },
      });
      // A stream silent for three of the hub's heartbeats is dead (a proxy lost it): reopen.
      let silence = null;
      const watch = () => {
        clearTimeout(silence);
        silence = setTimeout(() => stream.controller.abort(), this.sseSilence);
      };
      let started = false;
      try {
        const reader = r.body.getReader();
        for (;;) {
          watch();
          const { value, done } = await reader.read();
          if (done) break;
          started = true;
          parser.feed(value);
        }
      } catch (error) {
        if (!this._live(stream)) return;
      } finally {
        clearTimeout(silence);
      }
      parser.end();
      if (!this._live(stream)) return;
      stream.asking = false;
      if (disconnect && endsClient(disconnect.code, disconnect.reconnect, this.refreshable)) {
        if (disconnect.code !== CAPPED || !(beside || stream.capped)) {
          return this._stop(stream.gen, disconnect);
        }
        if (this._handOver(stream)) return;
        if (!(await this._cappedAgain(stream, beside))) return this._stop(stream.gen, disconnect);
        continue;
      }
      if (this._handOver(stream)) return;
      if (disconnect?.code === TOKEN_EXPIRED) { attempt = await this._renewToken(stream, attempt, disconnect); continue; }
      if (!started) return this._failed(stream.gen, { reason: "the stream ended before it started" });
      opened = false;
      await this._stall(stream, attempt++, disconnect ?? { reason: "the stream ended" });
    }
  }

  async _pollLoop(stream) {
    let attempt = 0;
    let opened = false;
    while (this._live(stream)) {
      if (offline()) return this._failed(stream.gen, { reason: "the browser is offline" });
      stream.controller = new AbortController();
      const q = this._streamQuery(stream);
      for (const sub of stream.subs) this.polled.add(sub.channel);
      // At once while a subscription waits to be confirmed; then a long poll.
      const waiting = [...stream.subs].some((sub) => sub.state !== "subscribed");
      const long = opened && !waiting;
      q.set("timeout", String(long ? this.pollTimeout : 0));
      // In presence as one client across polls: the id the hub gave, or empty for a new one.
      q.set("client", this._pollClient || "");
      if (long && !this.pollTimeout) {
        await sleep(PLAIN_POLL_PAUSE); // a hub that allows no long poll: plain ones, paced
        if (!this._live(stream)) return;
      }
      let r;
      let body;
      // A poll the hub holds for its timeout, and openTimeout more: past that, the connection
      // under it died without closing (nothing else would end the wait).
      const deadline = setTimeout(() => stream.controller.abort(),
        (long ? this.pollTimeout * 1000 : 0) + this.openTimeout);
      try {
        r = await fetch(`${this.urls.poll}?${q}`, { headers: this._headers(), signal: stream.controller.signal, cache: "no-store" });
        if (r.ok) body = await r.json();
      } catch (error) {
        if (!this._live(stream)) return;
        if (r && r.ok) { await this._stall(stream, attempt++, { reason: String(error) }); continue; }
        return this._failed(stream.gen, { reason: String(error) });
      } finally {
        clearTimeout(deadline);
      }
      if (!this._live(stream)) return;
      if (!r.ok) {
        const what = await this._httpError(stream, r);
        if (what === "again") { opened = false; continue; } // another query: a reopening
        if (what === "backoff") { await this._stall(stream, attempt++, { reason: `HTTP ${r.status}` }); continue; }
        if (what === "ended" && this.stream === stream) this.stream = null;
        return;
      }
      if (!body || !Array.isArray(body.publications)) return this._failed(stream.gen, { reason: "not a poll reply" });
      attempt = 0;
      if (typeof body.client === "string") this._pollClient = body.client;
      for (const added of body.subscribed || []) stream.subs.add(this._serverSubscribed(added));
      this._streamAt(stream, body.cursor);
      const first = !opened;
      opened = true;
      stream.refreshed = false;
      // A reply tells one reset: with one, a channel it brings nothing of may have another,
      // told by the next reply (asked at once); one it brings publications of recovered.
      const resets = new Set(body.reset ? [body.reset.channel] : []);
      const brought = new Set(body.publications.map((pub) => pub.channel));
      this._streamOpened(stream, first ? body.cursor : null, resets,
        (sub) => !body.reset || brought.has(sub.channel));
      if (body.reset) this._readBy(stream, body.reset.channel)?._reset(body.reset);
      for (const pub of body.publications) this._readBy(stream, pub.channel)?._deliver(pub);
      for (const u of body.unsubscribed || []) this._serverUnsubscribed(u);
      if (body.disconnect) {
        const { code, reconnect } = body.disconnect;
        if (endsClient(code, reconnect, this.refreshable)) return this._stop(stream.gen, body.disconnect);
        // The hub ended the session, as it ends an event stream: the next reply resumes it.
        opened = false;
        if (body.disconnect.code === TOKEN_EXPIRED) attempt = await this._renewToken(stream, attempt, body.disconnect);
        else await this._stall(stream, attempt++, body.disconnect);
      }
    }
  }
}

export function connect(url, options) {
  return new Client(url, options);
}
