// clarion browser client: a dependency-free ES module served by the hub at /clarion.js.
//
//   import { connect } from "http://127.0.0.1:8000/clarion.js";
//   const hub = connect("http://127.0.0.1:8000", { token, transport: "auto" });
//   const sub = hub.subscribe("chat:lobby", {
//     since: localStorage.cursor,                       // optional: resume from here
//     onPublication: (pub) => { localStorage.cursor = pub.cursor; render(pub.data); },
//     onReset: (reset) => reloadState(),                // history could not cover a gap
//   });
//
// Reconnects with full-jitter exponential backoff and resumes every subscription from its last
// cursor. transport "auto" tries WebSocket, then Server-Sent Events, then long polling.

const SUBPROTOCOL = "clarion.v1";

// The close-code table of docs/protocol.md: whether a client should reconnect after `code`.
const RECONNECT = new Set([1001, 1006, 1011, 1012, 1013, 1014]);
export function shouldReconnect(code) {
  if (code === undefined || code === null) return true;
  if (code >= 4000 && code < 4500) return true;
  if (code >= 4500 && code < 5000) return false;
  return RECONNECT.has(code);
}

export function backoffDelay(attempt, base = 500, cap = 20000) {
  return Math.random() * Math.min(cap, base * 2 ** attempt);  // full jitter
}

function endpoints(url) {
  const u = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  const base = u.pathname.replace(/\/(ws|sse|poll)?$/, "").replace(/\/$/, "");
  const http = `${u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol}//${u.host}${base}`;
  return { http, ws: http.replace(/^http/, "ws") + "/ws" };
}

class Subscription {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.cursor = options.since || null;
    this.onPublication = options.onPublication || (() => {});
    this.onReset = options.onReset || (() => {});
    this.onError = options.onError || ((e) => console.warn("clarion:", channel, e));
    this.lastOffset = null;
    this.lastEpoch = null;
    this.active = true;
    this.stream = null; // the per-subscription SSE or poll loop, when not on WebSocket
  }

  deliver(pub) {
    // Duplicates cannot come from one connection; across a reconnect, offsets guard anyway.
    if (this.lastEpoch === pub.epoch && this.lastOffset !== null && pub.offset <= this.lastOffset) return;
    this.lastEpoch = pub.epoch;
    this.lastOffset = pub.offset;
    this.cursor = pub.cursor;
    this.onPublication(pub);
  }

  reset(reset) {
    this.cursor = reset.cursor || this.cursor;
    this.lastOffset = null;
    this.onReset(reset);
  }

  unsubscribe() {
    this.active = false;
    this.client._unsubscribe(this);
  }
}

class Client {
  constructor(url, options = {}) {
    this.urls = endpoints(url);
    this.token = options.token || null;
    this.preferred = options.transport || "auto";
    this.base = options.backoffBase || 500;
    this.cap = options.backoffCap || 20000;
    this.onState = options.onState || (() => {});
    this.onDisconnect = options.onDisconnect || (() => {});
    this.subs = new Map();
    this.ws = null;
    this.transport = null;
    this.attempt = 0;
    this.closed = false;
    this.nextId = 1;
    this.pending = new Map();
    this.timer = null;
    this._open();
  }

  subscribe(channel, options = {}) {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this.transport === "ws" && this.ws && this.ws.readyState === 1) this._wsSubscribe(sub);
    else if (this.transport === "sse" || this.transport === "poll") this._startStream(sub);
    return sub;
  }

  publish(channel, data) {
    return this._request({ op: "publish", channel, data });
  }

  history(channel, options = {}) {
    return this._request({ op: "history", channel, ...options });
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    for (const sub of this.subs.values()) this._stopStream(sub);
    this._state("closed");
  }

  // ---- transports ---------------------------------------------------------------------------

  _order() {
    if (this.preferred !== "auto") return [this.preferred];
    return typeof WebSocket === "function" ? ["ws", "sse", "poll"] : ["sse", "poll"];
  }

  _open(skip = 0) {
    if (this.closed) return;
    const order = this._order();
    const transport = order[Math.min(skip, order.length - 1)];
    this.transport = transport;
    this._state("connecting");
    if (transport === "ws") this._openWebSocket(skip);
    else {
      this._state("connected");
      for (const sub of this.subs.values()) this._startStream(sub);
    }
  }

  _openWebSocket(skip) {
    const url = this.token ? `${this.urls.ws}?token=${encodeURIComponent(this.token)}` : this.urls.ws;
    let opened = false;
    const ws = new WebSocket(url, SUBPROTOCOL);
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this._state("connected");
      for (const sub of this.subs.values()) this._wsSubscribe(sub);
    };
    ws.onmessage = (event) => this._onFrame(JSON.parse(event.data));
    ws.onclose = (event) => {
      this.ws = null;
      for (const { reject } of this.pending.values()) reject(new Error("connection lost"));
      this.pending.clear();
      if (this.closed) return;
      if (!opened && this.preferred === "auto" && skip + 1 < this._order().length) {
        this._open(skip + 1); // the upgrade failed: fall back to SSE, then polling
        return;
      }
      this._lost(event.code, event.reason);
    };
  }

  _lost(code, reason) {
    this._state("disconnected");
    if (!shouldReconnect(code)) {
      this.closed = true;
      this.onDisconnect({ code, reason, reconnect: false });
      this._state("closed");
      return;
    }
    const delay = backoffDelay(this.attempt++, this.base, this.cap);
    this.timer = setTimeout(() => this._open(), delay);
  }

  _wsSubscribe(sub) {
    const command = { op: "subscribe", channel: sub.channel };
    if (sub.cursor) command.since = sub.cursor;
    this._request(command).then(
      (ok) => { if (!sub.cursor) sub.cursor = ok.cursor; },
      (error) => sub.onError(error),
    );
  }

  _request(command) {
    if (this.transport !== "ws" || !this.ws || this.ws.readyState !== 1) {
      if (command.op === "publish") return this._httpPublish(command);
      return Promise.reject(new Error("not connected over WebSocket"));
    }
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ id, ...command }));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  async _httpPublish(command) {
    const headers = { "content-type": "application/json" };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const r = await fetch(`${this.urls.http}/api/publish`, {
      method: "POST", headers, body: JSON.stringify({ channel: command.channel, data: command.data }),
    });
    const body = await r.json();
    if (!r.ok) throw Object.assign(new Error(body.error.message), body.error);
    return body;
  }

  _onFrame(msg) {
    if (msg.id !== undefined && msg.id !== null && this.pending.has(msg.id)) {
      const { resolve, reject } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.error) reject(Object.assign(new Error(msg.error.message), msg.error));
      else resolve(msg.ok);
    } else if (msg.reset) {
      const sub = this.subs.get(msg.reset.channel);
      if (sub) sub.reset(msg.reset);
    } else if (msg.disconnect) {
      this.onDisconnect(msg.disconnect);
    } else if (msg.channel !== undefined && msg.offset !== undefined) {
      const sub = this.subs.get(msg.channel);
      if (sub) sub.deliver(msg);
    }
  }

  _startStream(sub) {
    this._stopStream(sub);
    if (this.transport === "sse") this._sse(sub);
    else this._poll(sub);
  }

  _stopStream(sub) {
    if (sub.stream) sub.stream.stop();
    sub.stream = null;
  }

  _query(sub) {
    const q = new URLSearchParams({ channel: sub.channel });
    if (sub.cursor) q.set("cursor", sub.cursor);
    if (this.token) q.set("token", this.token);
    return q;
  }

  _sse(sub) {
    // EventSource reconnects by itself and sends Last-Event-ID; we only reopen after errors
    // it gives up on (a closed stream with readyState CLOSED), from our own cursor.
    const source = new EventSource(`${this.urls.http}/sse?${this._query(sub)}`);
    sub.stream = { stop: () => source.close() };
    source.addEventListener("message", (event) => sub.deliver(JSON.parse(event.data)));
    source.addEventListener("reset", (event) => sub.reset(JSON.parse(event.data)));
    source.addEventListener("disconnect", (event) => {
      const info = JSON.parse(event.data);
      this.onDisconnect(info);
      if (!info.reconnect) { source.close(); sub.active = false; }
    });
    source.onerror = () => {
      if (source.readyState === 2 && sub.active && !this.closed) {
        setTimeout(() => sub.active && this._sse(sub), backoffDelay(this.attempt++, this.base, this.cap));
      }
    };
  }

  _poll(sub) {
    let stopped = false;
    let controller = null;
    sub.stream = { stop: () => { stopped = true; if (controller) controller.abort(); } };
    const loop = async () => {
      let attempt = 0;
      while (!stopped && sub.active && !this.closed) {
        controller = new AbortController();
        try {
          const q = this._query(sub);
          q.set("timeout", "25");
          const r = await fetch(`${this.urls.http}/poll?${q}`, { signal: controller.signal });
          const body = await r.json();
          if (!r.ok) {
            sub.onError(body.error);
            if (r.status >= 400 && r.status < 500 && r.status !== 429) return;
            throw new Error(body.error.message);
          }
          attempt = 0;
          if (body.reset) sub.reset({ ...body.reset, cursor: body.cursor });
          for (const pub of body.publications) sub.deliver(pub);
          sub.cursor = body.cursor;
        } catch (error) {
          if (stopped) return;
          await new Promise((ok) => setTimeout(ok, backoffDelay(attempt++, this.base, this.cap)));
        }
      }
    };
    loop();
  }

  _unsubscribe(sub) {
    this.subs.delete(sub.channel);
    this._stopStream(sub);
    if (this.transport === "ws" && this.ws && this.ws.readyState === 1) {
      this._request({ op: "unsubscribe", channel: sub.channel }).catch(() => {});
    }
  }

  _state(state) {
    this.state = state;
    this.onState(state, this.transport);
  }
}

export function connect(url, options) {
  return new Client(url, options);
}
