// Minimal Node `ws` broadcast server: the reference for clarion's WebSocket fan-out benchmark.
//   node ws_server.js PORT
// GET /ws (WebSocket upgrade) subscribes; POST /pub broadcasts the request body, unchanged,
// as one text frame to every connected client; GET /healthz answers "ok".
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8081);
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: true });

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/pub')) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let n = 0;
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) {
          client.send(body, { binary: false });
          n += 1;
        }
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(`{"subscribers":${n}}`);
    });
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

server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws')) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
  });
});

server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;
server.listen(port, '127.0.0.1', 4096);
process.on('SIGTERM', () => process.exit(0));
