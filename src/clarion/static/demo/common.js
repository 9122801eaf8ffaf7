// What every demo page shares: who you are, the connection (with `?transport=ws|sse|poll`),
// and the bar at the top that shows which transport is live.
import { connect } from "/clarion.js";

export const params = new URLSearchParams(location.search);

const ANIMALS = ["otter", "heron", "lynx", "puffin", "badger", "gecko", "marten", "ibis"];
const NAME = /^[A-Za-z0-9_-]{1,24}$/;

// Your name is the token's user. It is kept in localStorage, so the tabs of one browser are one
// user (presence lists them once); `?user=` sets it.
export function myName() {
  let name = params.get("user");
  if (!name || !NAME.test(name)) name = localStorage.getItem("clarion-demo:user");
  if (!name || !NAME.test(name)) {
    const animal = ANIMALS[Math.floor(Math.random() * ANIMALS.length)];
    name = `${animal}-${Math.floor(Math.random() * 90 + 10)}`;
  }
  localStorage.setItem("clarion-demo:user", name);
  return name;
}

export function colorOf(name) {
  // The hub's demo token carries the same colour in `info`; this one needs no round trip.
  let sum = 0;
  for (const byte of new TextEncoder().encode(name)) sum += byte;
  return `hsl(${(sum * 47) % 360} 70% 45%)`;
}

const PAGES = [["chat", "Chat"], ["ticker", "Ticker"], ["board", "Board"], ["dashboard", "Dashboard"]];
const CHOICES = ["ws", "sse", "poll"];

// The client for this page. The token comes from the demo's own endpoint (a real app asks its
// backend); the client calls getToken again before it expires.
export function start(page) {
  const me = myName();
  const wanted = params.get("transport");
  const options = {
    getToken: async () => {
      const r = await fetch(`/demo/token?user=${encodeURIComponent(me)}`, { cache: "no-store" });
      if (!r.ok) throw new Error(`token: HTTP ${r.status}`);
      return (await r.json()).token;
    },
  };
  if (CHOICES.includes(wanted)) options.transports = [wanted];
  const client = connect(location.origin, options);
  bar(page, me, wanted, client);
  window.demo = { client, me }; // for the console, and the tests
  return { client, me };
}

function link(path, extra = {}) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(extra)) v === null ? q.delete(k) : q.set(k, v);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}
export { el };

function bar(page, me, wanted, client) {
  const header = document.getElementById("bar");
  const nav = el("nav", {}, el("a", { href: link("/demo/"), class: "brand" }, "clarion"),
    ...PAGES.map(([p, label]) =>
      el("a", { href: link(`/demo/${p}`), class: p === page ? "here" : "" }, label)));
  const live = el("span", { id: "transport", class: "transport", "data-state": "connecting" }, "…");
  const choices = el("span", { class: "choices" }, "use ",
    ...[...CHOICES, "auto"].map((t) => el("a", {
      href: link(location.pathname, { transport: t === "auto" ? null : t }),
      class: (wanted || "auto") === t || (t === "auto" && !CHOICES.includes(wanted)) ? "here" : "",
    }, t)));
  const who = el("span", { class: "me" }, el("i", { class: "dot", style: `background:${colorOf(me)}` }), me);
  header.append(nav, el("span", { class: "status" }, who, live, choices));
  const show = (state) => {
    live.dataset.state = state;
    live.textContent = client.transport ? `${client.transport} · ${state}` : state;
    live.title = `transport: ${client.transport}, ${state}`;
  };
  for (const s of ["connecting", "connected", "disconnected", "closed"]) client.on(s, () => show(s));
}

// Who is on a channel, per user (a user's tabs are one), `me` always among them: read from presence
// on every (re)subscribe, kept up by join and leave. A long-polling client is in no presence and
// gets no join or leave between polls: it reads presence again every 5 s. `render` gets the names.
// The demo's own clients (the board's keeper, "demo:board") have a ':' that no person's name has.
export function people(client, channel, me, render) {
  const users = new Set([me]);
  const person = (user) => user && !user.includes(":");
  const show = () => render([...users].sort());
  async function refresh() {
    try {
      const { users: here = [] } = await client.presence(channel);
      users.clear();
      users.add(me);
      for (const u of here) if (person(u.user)) users.add(u.user);
      show();
    } catch (error) {
      console.warn("presence", error);
    }
  }
  setInterval(() => { if (client.transport === "poll") refresh(); }, 5000);
  show();
  return {
    refresh,
    onJoin: (e) => { if (person(e.user)) { users.add(e.user); show(); } },
    onLeave: (e) => { if (e.user && e.user !== me) { users.delete(e.user); show(); } },
  };
}

// "12:04:31" for a publication's time (ms since the epoch).
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}
