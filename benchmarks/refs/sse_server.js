// Minimal Node `http` Server-Sent Events broadcast server: the reference for clarion's SSE
// fan-out benchmark.   node sse_server.js PORT
// GET /sse subscribes (text/event-stream); POST /pub broadcasts the request body as one
// `data:` event, encoded once and written to every subscriber; GET /healthz answers "ok".
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 8082);
const subscribers = new Set();
let seq = 0;

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/pub')) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      seq += 1;
      const event = Buffer.from(`id: ${seq}\ndata: ${Buffer.concat(chunks).toString()}\n\n`);
      for (const sub of subscribers) sub.write(event);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(`{"subscribers":${subscribers.size}}`);
    });
    return;
  }
  if (req.method === 'GET' && req.url.startsWith('/sse')) {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
      'X-Accel-Buffering': 'no',
    });
    res.write('retry: 1000\n\n');
    subscribers.add(res);
    const drop = () => subscribers.delete(res);
    req.on('close', drop);
    res.on('error', drop);
    return;
  }
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(404);
  res.end();
});

server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;
server.requestTimeout = 0;
server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
