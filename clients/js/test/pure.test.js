import { test } from "node:test";
import assert from "node:assert/strict";

import {
  SseParser, backoffDelay, endpoints, refreshDelay, shouldReconnect, tokenExpiry,
} from "../clarion.js";

function parse(chunks, options = {}) {
  const events = [];
  const ids = [];
  const comments = [];
  const retries = [];
  const parser = new SseParser({
    onEvent: (e) => events.push(e), onId: (id) => ids.push(id),
    onComment: (c) => comments.push(c), onRetry: (r) => retries.push(r), ...options,
  });
  for (const chunk of chunks) parser.feed(typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk);
  parser.end();
  return { events, ids, comments, retries };
}

// Every way to split a stream into chunks of one or two pieces must parse the same.
function everySplit(text) {
  const whole = parse([text]);
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(parse([bytes.slice(0, i), bytes.slice(i)]), whole, `split at ${i}`);
  }
  assert.deepEqual(parse([...bytes].map((b) => new Uint8Array([b]))), whole, "byte by byte");
  return whole;
}

test("backoff is full jitter under an exponential cap", () => {
  assert.equal(backoffDelay(0, 500, 20000, () => 0.999999) < 500, true);
  assert.equal(backoffDelay(3, 500, 20000, () => 0.5), 2000);
  assert.equal(backoffDelay(10, 500, 20000, () => 0.5), 10000);      // capped at 20 s
  assert.equal(backoffDelay(1000, 500, 20000, () => 0.5), 10000);    // no overflow to Infinity
  assert.equal(backoffDelay(5, 500, 20000, () => 0), 0);
  for (let n = 0; n < 200; n++) {
    const d = backoffDelay(n % 12);
    assert.ok(d >= 0 && d < 20000);
  }
});

test("endpoints from a base URL, a mount point or a transport URL", () => {
  const e = endpoints("http://127.0.0.1:8000");
  assert.equal(e.ws, "ws://127.0.0.1:8000/ws");
  assert.equal(e.sse, "http://127.0.0.1:8000/sse");
  assert.equal(e.poll, "http://127.0.0.1:8000/poll");
  assert.equal(e.publish, "http://127.0.0.1:8000/client/publish");
  assert.equal(e.healthz, "http://127.0.0.1:8000/healthz");
  const mounted = endpoints("https://app.example.com/rt/");
  assert.equal(mounted.ws, "wss://app.example.com/rt/ws");
  assert.equal(mounted.history, "https://app.example.com/rt/client/history");
  assert.equal(endpoints("wss://h.example/rt/ws").http, "https://h.example/rt");
  assert.equal(endpoints("ws://h:1/sse").ws, "ws://h:1/ws");
  assert.equal(endpoints("/rt", "https://page.example/x/y").ws, "wss://page.example/rt/ws");
  assert.equal(endpoints("http://h/wss").ws, "ws://h/wss/ws");   // only whole segments
  assert.throws(() => endpoints("ftp://h/"), /not a hub URL/);
});

test("the close-code table", () => {
  for (const code of [1001, 1006, 1011, 4000, 4001, 4004, 4499, undefined, null]) assert.equal(shouldReconnect(code), true, code);
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4500, 4501, 4507, 4999]) assert.equal(shouldReconnect(code), false, code);
});

test("token expiry from the exp claim, and when to refresh", () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(tokenExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "1", exp: 1700000000 })}.sig`), 1700000000);
  assert.equal(tokenExpiry(`${b64({})}.${b64({ sub: "1" })}.sig`), null);
  assert.equal(tokenExpiry("not a token"), null);
  assert.equal(tokenExpiry("a.%%%.c"), null);
  assert.equal(tokenExpiry(null), null);
  const now = 1_000_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 5, now), 3000);            // 5 s token: 2 s early
  assert.equal(refreshDelay(now / 1000 + 1, now), 0);               // shorter: at once
  assert.equal(refreshDelay(now / 1000 + 100, now), 90000);         // a tenth of what is left
  assert.equal(refreshDelay(now / 1000 + 3600, now), 3570000);      // at most 30 s early
  assert.equal(refreshDelay(now / 1000 - 5, now), 0);               // already expired: now
});

test("SSE: LF, CR and CRLF line ends, across every chunk boundary", () => {
  for (const nl of ["\n", "\r", "\r\n"]) {
    const text = `retry: 200${nl}id: c0${nl}${nl}id: c1${nl}event: message${nl}data: {"a":1}${nl}${nl}` +
      `event: reset${nl}data: x${nl}data: y${nl}${nl}`;
    const { events, ids, retries } = everySplit(text);
    assert.deepEqual(retries, [200]);
    assert.deepEqual(ids, ["c0", "c1"]);
    assert.deepEqual(events, [
      { type: "message", data: '{"a":1}', id: "c1" },
      { type: "reset", data: "x\ny", id: "c1" },
    ]);
  }
});

test("SSE: a lone CR before an LF in the next chunk is one line end", () => {
  const { events } = parse(["data: a\r", "\ndata: b\r", "\r"]);
  assert.deepEqual(events, [{ type: "message", data: "a\nb", id: "" }]);
});

test("SSE: a leading BOM is dropped once, later ones are data", () => {
  const { events } = everySplit("\uFEFFdata: one\n\n");
  assert.deepEqual(events.map((e) => e.data), ["one"]);
  const bom = parse(["\uFEFF\uFEFFdata: x\n\n"]);
  assert.deepEqual(bom.events, []); // the second BOM starts an unknown field
  const inside = parse(["data: \uFEFFx\n\n"]);
  assert.equal(inside.events[0].data, "\uFEFFx");
});

test("SSE: comments, fields without colon, one space stripped, unknown fields", () => {
  const { events, comments } = everySplit(": ping\n:\ndata\ndata:  two spaces\nfoo: bar\nid: a\0b\n\n");
  assert.deepEqual(comments, [" ping", ""]);
  assert.deepEqual(events, [{ type: "message", data: "\n two spaces", id: "" }]); // id with NUL ignored
});

test("SSE: an event without data dispatches nothing but its id; the end drops a partial event", () => {
  const { events, ids } = parse(["id: x\nevent: reset\n\nid: y\ndata: kept\n\ndata: lost"]);
  assert.deepEqual(ids, ["x", "y"]);
  assert.deepEqual(events, [{ type: "message", data: "kept", id: "y" }]);
});

test("SSE: multi-byte characters split across chunks", () => {
  const { events } = everySplit('data: {"t":"h\u00e9llo \u{1F600} \u4e16"}\n\n');
  assert.equal(JSON.parse(events[0].data).t, "h\u00e9llo \u{1F600} \u4e16");
});

test("SSE: long lines over many chunks, and a bound on them", () => {
  const long = "x".repeat(300_000);
  const chunks = [];
  const text = `data: ${long}\n\n`;
  for (let i = 0; i < text.length; i += 1000) chunks.push(text.slice(i, i + 1000));
  assert.equal(parse(chunks).events[0].data, long);
  assert.throws(() => parse(chunks, { maxLine: 100_000 }), /too long/);
});
