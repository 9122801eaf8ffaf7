// Board: sticky notes kept by the demo server, their changes (add, move, edit, delete) carried
// by a stored channel; cursors as live signals (ephemeral), the latest per user.
//
// The server holds the board (clarion/demo/board.py): it follows the channel, applies every
// change, and answers /demo/board.json with the notes and the cursor of the last change they
// hold. A page draws that, then subscribes from that cursor: every later change once, however
// many the channel's history has let go before.
import { start, el, colorOf, people } from "/demo/common.js";

const NOTES = "board:main";
const CURSORS = "cursors:main";
// The server's bounds (board.py): a full board takes no new note; longer texts are cut.
const MAX_NOTES = 200;
const MAX_TEXT = 500;
const MAX_ID = 64;
const { client, me } = start("board");
const board = document.getElementById("board");

// ---- notes ----

const notes = new Map(); // id → element
const pastel = (name) => colorOf(name).replace("70% 45%", "90% 86%");
const place = (node, x, y) => {
  node.style.left = `${x * 100}%`;
  node.style.top = `${y * 100}%`;
};
// Characters as Python counts them (code points), so that a cut text is the server's too.
const cut = (text) => [...text].slice(0, MAX_TEXT).join("");
const coordinate = (v) => (typeof v === "number" && Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : null);

function addNote(id, x, y, text, by) {
  const body = el("div", { class: "text", contenteditable: "true", spellcheck: "false" }, text);
  const del = el("span", { class: "del", title: "delete" }, "×");
  const made = el("div", { class: "note", "data-id": id, style: `background:${pastel(by)}` },
    del, body, el("div", { class: "by" }, `by ${by}`));
  place(made, x, y);
  notes.set(id, made);
  board.append(made);
  wire(made, id, body, del);
}

// One change, by the server's rules: whatever a page publishes, the page and the snapshot
// agree. A known id is not added twice; an unknown one is not moved, edited or deleted.
function apply(change, by) {
  if (!change || typeof change !== "object") return;
  const { op, id } = change;
  if (typeof id !== "string" || id.length === 0 || [...id].length > MAX_ID) return;
  const node = notes.get(id);
  const x = coordinate(change.x);
  const y = coordinate(change.y);
  const text = typeof change.text === "string" ? cut(change.text) : null;
  if (op === "add" && !node && x !== null && y !== null) {
    if (notes.size < MAX_NOTES) addNote(id, x, y, text ?? "", by);
  } else if (op === "move" && node && x !== null && y !== null) {
    place(node, x, y);
  } else if (op === "edit" && node && text !== null) {
    const body = node.querySelector(".text");
    if (document.activeElement !== body) body.textContent = text;
  } else if (op === "delete" && node) {
    node.remove();
    notes.delete(id);
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
    if (text.textContent !== before) send({ op: "edit", id, text: cut(text.textContent) });
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
      at = { x: coordinate(left + p.x - start.x), y: coordinate(top + p.y - start.y) };
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
  if (notes.size >= MAX_NOTES) return notice(`The board is full (${MAX_NOTES} notes): delete one first.`);
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  send({ op: "add", id, x: 0.1 + Math.random() * 0.6, y: 0.1 + Math.random() * 0.5, text: "New note" });
});

// The server's notes and the cursor they are at, asked again until it answers.
async function snapshot() {
  for (let wait = 500; ; wait = Math.min(2 * wait, 10000)) {
    try {
      const r = await fetch("/demo/board.json", { cache: "no-store" });
      if (r.ok) return await r.json();
      console.warn(`board: HTTP ${r.status}, asking again`);
    } catch (error) {
      console.warn("board", error);
    }
    await new Promise((done) => setTimeout(done, wait));
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

// ---- start: draw the snapshot, then follow the changes from its cursor ----

let notesSub = null;
let resets = 0; // in a row: one more means the snapshot is behind too, so wait a little

async function follow() {
  const { notes: held, cursor } = await snapshot();
  notesSub?.unsubscribe();
  for (const node of notes.values()) node.remove();
  notes.clear();
  for (const n of held) addNote(n.id, n.x, n.y, n.text, n.by);
  const sub = client.subscribe(NOTES, {
    since: cursor,
    onPublication: (pub) => {
      // A live signal is in no history, so not in the snapshot either: it changes nothing.
      if (pub.ephemeral) return;
      resets = 0;
      apply(pub.data, pub.info?.user ?? "?");
    },
    onSubscribed: here.refresh,
    onReset: () => {
      // History no longer reaches back to where we were: start again from a new snapshot.
      if (sub !== notesSub) return;
      notice("Missed changes while disconnected — reloaded the board.");
      setTimeout(follow, Math.min(10000, 1000 * (2 ** resets++ - 1)));
    },
    onJoin: here.onJoin,
    onLeave: here.onLeave,
  });
  notesSub = sub;
}
follow();
