// @stomp/stompjs against a clarion hub, in Node with `ws` as the WebSocket.
//
//   node interop.mjs <http base URL> <token> <bad token> <API key>
//
// Prints one JSON object with what was observed; exits non-zero if a step failed or timed out.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const [base, token, badToken, apiKey] = process.argv.slice(2);
const stompUrl = base.replace(/^http/, 'ws') + '/stomp';
const channel = 'chat:lobby';
const destination = `/topic/${channel}`;
const report = {};

function withTimeout(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

function makeClient(connectHeaders, extra = {}) {
  return new Client({
    webSocketFactory: () => new WebSocket(stompUrl, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
    connectHeaders,
    reconnectDelay: 0,
    heartbeatIncoming: 500,
    heartbeatOutgoing: 500,
    debug: () => {},
    ...extra,
  });
}

function connect(client) {
  return new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (frame) => reject(new Error(`ERROR: ${frame.headers.message}`));
    client.onWebSocketClose = (evt) => reject(new Error(`closed ${evt.code} before CONNECTED`));
    client.activate();
  });
}

async function publishOverHttp(data) {
  const response = await fetch(`${base}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `apikey ${apiKey}` },
    body: JSON.stringify({ channel, data }),
  });
  if (!response.ok) throw new Error(`publish: HTTP ${response.status}`);
  return response.json();
}

async function roundTrip() {
  let heartBeats = 0;
  let heartBeatLost = false;
  const client = makeClient(
    { Authorization: `Bearer ${token}`, host: 'clarion' },
    {
      onHeartbeatReceived: () => { heartBeats += 1; },
      onHeartbeatLost: () => { heartBeatLost = true; },
    },
  );
  const connected = await withTimeout(connect(client), 5000, 'CONNECTED');
  report.version = connected.headers.version;
  report.server = connected.headers.server;
  report.heartBeat = connected.headers['heart-beat'];
  report.user = connected.headers['user-name'];

  const messages = [];
  let arrived = () => {};
  const subscribed = new Promise((resolve) => client.watchForReceipt('sub-1', resolve));
  client.subscribe(destination, (message) => {
    messages.push(message);
    arrived();
  }, { receipt: 'sub-1' });
  await withTimeout(subscribed, 5000, 'SUBSCRIBE receipt');
  const nextMessage = () => new Promise((resolve) => {
    if (messages.length) { resolve(messages.shift()); return; }
    arrived = () => { arrived = () => {}; resolve(messages.shift()); };
  });

  const published = await publishOverHttp({ text: 'from the API' });
  const fromApi = await withTimeout(nextMessage(), 5000, 'MESSAGE from the API');
  report.fromApi = {
    body: JSON.parse(fromApi.body),
    messageId: fromApi.headers['message-id'],
    expectedId: published.cursor,
    destination: fromApi.headers.destination,
    contentType: fromApi.headers['content-type'],
  };

  const sent = new Promise((resolve) => client.watchForReceipt('send-1', resolve));
  client.publish({
    destination,
    body: JSON.stringify({ text: 'from stompjs' }),
    headers: { 'content-type': 'application/json', receipt: 'send-1' },
  });
  const [receipt, own] = await withTimeout(Promise.all([sent, nextMessage()]), 5000, 'own message');
  report.own = {
    body: JSON.parse(own.body),
    receiptCursor: receipt.headers['x-cursor'],
    messageId: own.headers['message-id'],
  };

  // Stay connected across several heart-beat periods: both sides beat, nobody drops.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  report.heartBeatsReceived = heartBeats;
  report.heartBeatLost = heartBeatLost;
  report.lastMessageId = own.headers['message-id'];
  await client.deactivate();
}

async function resume() {
  await publishOverHttp('missed 1');
  await publishOverHttp('missed 2');
  const client = makeClient({ passcode: token });
  await withTimeout(connect(client), 5000, 'CONNECTED (resume)');
  const bodies = [];
  const done = new Promise((resolve) => {
    client.subscribe(destination, (message) => {
      bodies.push(JSON.parse(message.body));
      if (bodies.length === 2) resolve();
    }, { 'x-since': report.lastMessageId });
  });
  await withTimeout(done, 5000, 'resumed messages');
  report.resumed = bodies;
  await client.deactivate();
}

async function wrongToken() {
  const client = makeClient({ passcode: badToken });
  const refused = new Promise((resolve) => {
    const seen = {};
    client.onStompError = (frame) => { seen.message = frame.headers.message; };
    client.onWebSocketClose = (evt) => { seen.closeCode = evt.code; resolve(seen); };
    client.onConnect = () => resolve({ connected: true });
  });
  client.activate();
  report.wrongToken = await withTimeout(refused, 5000, 'ERROR for a wrong token');
  await client.deactivate();
}

try {
  await roundTrip();
  await resume();
  await wrongToken();
  console.log(JSON.stringify(report));
} catch (error) {
  console.log(JSON.stringify({ ...report, failure: String(error) }));
  process.exitCode = 1;
}
