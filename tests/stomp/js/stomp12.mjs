// @stomp/stompjs against a clarion hub: the STOMP 1.2 features beyond a JSON round trip.
//
//   node stomp12.mjs <http base URL> <token> <API key> <feature>...
//
// Features: heartbeat, subscriptions, bodies, headers, transactions. Prints one JSON object with what was observed per
// feature; exits non-zero if a step failed or timed out.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const [base, token, apiKey, ...features] = process.argv.slice(2);
const stompUrl = base.replace(/^http/, 'ws') + '/stomp';
const report = {};

function withTimeout(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

async function connected(extra = {}) {
  const client = new Client({
    webSocketFactory: () => new WebSocket(stompUrl, ['v12.stomp']),
    connectHeaders: { passcode: token },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
    ...extra,
  });
  const frame = await withTimeout(new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (f) => reject(new Error(`ERROR: ${f.headers.message}`));
    client.onWebSocketClose = (evt) => reject(new Error(`closed ${evt.code}`));
    client.activate();
  }), 5000, 'CONNECTED');
  client.onWebSocketClose = () => {};
  return [client, frame];
}

async function publishOverHttp(channel, data) {
  const response = await fetch(`${base}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `apikey ${apiKey}` },
    body: JSON.stringify({ channel, data }),
  });
  if (!response.ok) throw new Error(`publish: HTTP ${response.status}`);
  return response.json();
}

function receipt(client, id) {
  return new Promise((resolve) => client.watchForReceipt(id, resolve));
}

// A queue of messages per subscription, read in order.
function inbox() {
  const messages = [];
  let waiter = null;
  return {
    push(message) {
      messages.push(message);
      if (waiter) { const w = waiter; waiter = null; w(); }
    },
    next(what) {
      return withTimeout(new Promise((resolve) => {
        const take = () => resolve(messages.shift());
        if (messages.length) take(); else waiter = take;
      }), 5000, what);
    },
    get length() { return messages.length; },
  };
}

const checks = {
  // A client asking for heart-beats every second gets them every second, although the hub's
  // WebSocket pings are 25 s apart.
  async heartbeat() {
    let beats = 0;
    let lost = false;
    const [client, frame] = await connected({
      heartbeatIncoming: 1000,
      heartbeatOutgoing: 1000,
      onHeartbeatReceived: () => { beats += 1; },
      onHeartbeatLost: () => { lost = true; },
    });
    await new Promise((resolve) => setTimeout(resolve, 3500));
    report.heartbeat = { header: frame.headers['heart-beat'], beats, lost };
    await client.deactivate();
  },

  // Two subscriptions to one destination: each its own messages, ids and acks.
  async subscriptions() {
    const destination = '/topic/chat:twice';
    const [client] = await connected();
    const a = inbox();
    const b = inbox();
    const subA = client.subscribe(destination, (m) => a.push(m), { id: 'a', receipt: 'ra' });
    await withTimeout(receipt(client, 'ra'), 5000, 'receipt a');
    client.subscribe(destination, (m) => b.push(m),
      { id: 'b', ack: 'client-individual', receipt: 'rb' });
    await withTimeout(receipt(client, 'rb'), 5000, 'receipt b');
    const published = await publishOverHttp('chat:twice', 'both');
    const [ma, mb] = [await a.next('message on a'), await b.next('message on b')];
    const acked = receipt(client, 'ack-b');
    mb.ack({ receipt: 'ack-b' });
    const ackReceipt = await withTimeout(acked, 5000, 'ACK receipt');
    subA.unsubscribe();
    await publishOverHttp('chat:twice', 'only b');
    const onlyB = await b.next('second message on b');
    await new Promise((resolve) => setTimeout(resolve, 300));
    report.subscriptions = {
      a: { subscription: ma.headers.subscription, body: ma.body, ack: ma.headers.ack ?? null },
      b: { subscription: mb.headers.subscription, body: mb.body, ack: mb.headers.ack ?? null },
      messageIds: [ma.headers['message-id'], mb.headers['message-id']],
      expectedId: published.cursor,
      ackCursor: ackReceipt.headers['x-cursor'],
      afterUnsubscribe: { b: onlyB.body, a: a.length },
    };
    await client.deactivate();
  },

  // Text and binary bodies arrive byte for byte, with their content-type.
  async bodies() {
    const destination = '/topic/chat:bodies';
    const [client] = await connected();
    const box = inbox();
    client.subscribe(destination, (m) => box.push(m), { id: 's', receipt: 'rs' });
    await withTimeout(receipt(client, 'rs'), 5000, 'SUBSCRIBE receipt');
    const binary = new Uint8Array([0, 1, 2, 255, 0, 128, 10, 0]);
    client.publish({ destination, binaryBody: binary,
      headers: { 'content-type': 'application/octet-stream' } });
    client.publish({ destination, body: 'plain text, not JSON', headers: { 'content-type': 'text/plain' } });
    const big = 'x'.repeat(100 * 1024);
    client.publish({ destination, body: big });
    const [b, t, l] = [await box.next('binary'), await box.next('text'), await box.next('large')];
    report.bodies = {
      binary: Array.from(b.binaryBody),
      binaryType: b.headers['content-type'],
      text: t.body,
      textType: t.headers['content-type'],
      large: l.body === big,
      largeType: l.headers['content-type'] ?? null,
    };
    await client.deactivate();
  },

  // Headers a client adds to SEND reach the subscribers' MESSAGE frames. (No backslash in the
  // value: stompjs unescapes `\\` after `\c`, so it would misread `\\c`.)
  async headers() {
    const destination = '/topic/chat:headers';
    const [client] = await connected();
    const box = inbox();
    client.subscribe(destination, (m) => box.push(m), { id: 's', receipt: 'rs' });
    await withTimeout(receipt(client, 'rs'), 5000, 'SUBSCRIBE receipt');
    client.publish({ destination, body: '{"n":1}',
      headers: { 'content-type': 'application/json', 'x-trace': 'a:b\nc', priority: '5' } });
    const message = await box.next('message with headers');
    report.headers = {
      trace: message.headers['x-trace'],
      priority: message.headers.priority,
      body: message.body,
    };
    await client.deactivate();
  },

  // SENDs and ACKs in a transaction take effect at COMMIT, in order; ABORT drops them.
  async transactions() {
    const destination = '/topic/chat:tx';
    const [client] = await connected();
    const box = inbox();
    client.subscribe(destination, (m) => box.push(m), { id: 's', receipt: 'rs' });
    await withTimeout(receipt(client, 'rs'), 5000, 'SUBSCRIBE receipt');
    const dropped = client.begin('dropped');
    client.publish({ destination, body: '"never"', headers: { transaction: dropped.id } });
    dropped.abort();
    const tx = client.begin('tx-1');
    for (const n of [1, 2, 3]) {
      client.publish({ destination, body: JSON.stringify(n),
        headers: { transaction: tx.id, 'content-type': 'application/json' } });
    }
    const held = receipt(client, 'held');
    client.publish({ destination, body: '4', headers: { transaction: tx.id, receipt: 'held' } });
    await withTimeout(held, 5000, 'receipt of a held SEND');
    await new Promise((resolve) => setTimeout(resolve, 300));
    const beforeCommit = box.length;
    tx.commit();
    const bodies = [];
    for (let n = 0; n < 4; n += 1) bodies.push((await box.next('committed message')).body);
    report.transactions = { beforeCommit, bodies };
    await client.deactivate();
  },
};

try {
  for (const feature of features) await checks[feature]();
  console.log(JSON.stringify(report));
} catch (error) {
  console.log(JSON.stringify({ ...report, failure: String(error) }));
  process.exitCode = 1;
}
