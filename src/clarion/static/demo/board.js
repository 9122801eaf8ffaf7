// Board: sticky notes as a stream of stored events (add, move, edit, delete) that every visitor
// replays from history, and cursors as live signals (ephemeral), the latest per user.
import { start, el, colorOf, people } from "/demo/common.js";

const NOTES = "board:main";
const CURSORS = "cursors:main";
const { client, me } = start("board");
const board = document.getElementById("board");

// ---- notes ----

const notes = new Map(); // id → element
const pastel = (name) => colorOf(name).replace("70% 45%", "90% 86%");
const place = (node, x, y) => {
  node.style.left = `${x * 100}%`;
  node.style.top = `${y * 100}%`;
};

function apply(event, by) {
  const node = notes.get(event.id);
  if (event.op === "add" && !node) {
    const text = el("div", { class: "text", contenteditable: "true", spellcheck: "false" }, event.text);
    const del = el("span", { class: "del", title: "delete" }, "×");
    const made = el("div", { class: "note", "data-id": event.id, style: `background:${pastel(by)}` },
      del, text, el("div", { class: "by" }, `by ${by}`));
    place(made, event.x, event.y);
    notes.set(event.id, made);
    board.append(made);
    wire(made, event.id, text, del);
  } else if (node && event.op === "move") {
    place(node, event.x, event.y);
  } else if (node && event.op === "edit") {
    const text = node.querySelector(".text");
    if (document.activeElement !== text) text.textContent = event.text;
  } else if (node && event.op === "delete") {
    node.remove();
    notes.delete(event.id);
  }
}

const send = (event) => client.publish(NOTES, event).catch((e) => notice(`not saved: ${e.code || e.message}`));
const notice = (text) => { const n = document.getElementById("notice"); n.textContent = text; n.hidden = false; };
const fraction = (e) => {
  const r = board.getBoundingClientRect();
  return { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
           y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
};

function wire(node, id, text, del) {
  del.addEventListener("click", () => send({ op: "delete", id }));
  let before = null;
  text.addEventListener("focus", () => { before = text.textContent; });
  text.addEventListener("blur", () => {
    if (text.textContent !== before) send({ op: "edit", id, text: text.textContent.slice(0, 500) });
  });
  node.addEventListener("pointerdown", (e) => {
    if (e.target === text || e.target === del) return;
    const start = fraction(e);
    const left = parseFloat(node.style.left) / 100;
    const top = parseFloat(node.style.top) / 100;
    let at = { x: left, y: top };
    node.setPointerCapture(e.pointerId);
    const move = (m) => {
      const p = fraction(m);
      at = { x: Math.max(0, left + p.x - start.x), y: Math.max(0, top + p.y - start.y) };
      place(node, at.x, at.y);
    };
    const up = () => {
      node.removeEventListener("pointermove", move);
      node.removeEventListener("pointerup", up);
      if (at.x !== left || at.y !== top) send({ op: "move", id, x: at.x, y: at.y });
    };
    node.addEventListener("pointermove", move);
    node.addEventListener("pointerup", up);
  });
}

document.getElementById("add").addEventListener("click", () => {
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  send({ op: "add", id, x: 0.1 + Math.random() * 0.6, y: 0.1 + Math.random() * 0.5, text: "New note" });
});

// History first (every event the channel holds, oldest first), then a subscription from the
// cursor where it ended: nothing missed in between, nothing twice.
async function load() {
  for (const node of notes.values()) node.remove();
  notes.clear();
  let since;
  for (;;) {
    const page = await client.history(NOTES, since ? { since } : {});
    for (const pub of page.publications) apply(pub.data, pub.info?.user ?? "?");
    since = page.cursor;
    if (!page.more) return since;
  }
}

// ---- who is here ----

const here = people(client, NOTES, me, (users) =>
  document.getElementById("people").replaceChildren(...users.map((u) =>
    el("span", { class: "avatar", "data-user": u, title: u, style: `background:${colorOf(u)}` },
      u.slice(0, 2).toUpperCase()))));

// ---- cursors ----

const cursors = new Map(); // user → { node, seen }

function showCursor(user, x, y) {
  let c = cursors.get(user);
  if (!c) {
    const color = colorOf(user);
    const node = el("div", { class: "cursor", "data-user": user });
    node.innerHTML = `<svg width="16" height="20" viewBox="0 0 16 20"><path d="M1 1l14 9-6 1.5L6 19z"
      fill="${color}" stroke="#fff" stroke-width="1.5"/></svg>`;
    node.append(el("span", { style: `background:${color}` }, user));
    board.append(node);
    c = { node, seen: 0 };
    cursors.set(user, c);
  }
  c.seen = Date.now();
  c.node.dataset.x = String(x);
  c.node.dataset.y = String(y);
  c.node.hidden = false;
  place(c.node, x, y);
}

function hideCursor(user) {
  const c = cursors.get(user);
  if (c) c.node.hidden = true;
}
setInterval(() => {
  for (const [user, c] of cursors) if (Date.now() - c.seen > 10000) hideCursor(user);
}, 1000);

let lastMove = 0;
let queued = null;
// A live signal: never stored; a browser that falls behind gets the latest per user.
const signal = (data) => client.publish(CURSORS, data, { ephemeral: true, key: me }).catch(() => {});
board.addEventListener("pointermove", (e) => {
  queued = fraction(e);
  const wait = 60 - (Date.now() - lastMove); // at most ~16 signals a second
  if (wait <= 0) { lastMove = Date.now(); signal(queued); queued = null; }
  else setTimeout(() => { if (queued) { lastMove = Date.now(); signal(queued); queued = null; } }, wait);
});
board.addEventListener("pointerleave", () => signal({ gone: true }));

client.subscribe(CURSORS, {
  onPublication: (pub) => {
    const user = pub.info?.user;
    if (!user || user === me) return;
    if (pub.data?.gone) hideCursor(user);
    else showCursor(user, pub.data.x, pub.data.y);
  },
});

// ---- start: wait for the connection, replay the notes, then follow them ----

client.on("connected", async function once() {
  client.off("connected", once);
  const since = await load();
  client.subscribe(NOTES, {
    since,
    onPublication: (pub) => apply(pub.data, pub.info?.user ?? "?"),
    onSubscribed: here.refresh,
    onReset: async () => {
      // History no longer reaches back to where we were: rebuild the board from it.
      notice("Missed changes while disconnected — reloaded the board.");
      await load();
    },
    onJoin: here.onJoin,
    onLeave: here.onLeave,
  });
});
