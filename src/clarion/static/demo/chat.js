// Chat: a room is the channel chat:<room>; its typing signals go on typing:<room>.
import { start, params, el, colorOf, clock, people } from "/demo/common.js";

const ROOMS = ["lobby", "random", "help"];
const room = ROOMS.includes(params.get("room")) ? params.get("room") : "lobby";
const channel = `chat:${room}`;
const typingChannel = `typing:${room}`;
const { client, me } = start("chat");

const $ = (id) => document.getElementById(id);
$("title").textContent = `# ${room}`;
document.title = `clarion demo · #${room}`;
for (const r of ROOMS) {
  const q = new URLSearchParams(location.search);
  q.set("room", r);
  $("rooms").append(el("li", {}, el("a", { href: `?${q}`, class: r === room ? "here" : "" }, `# ${r}`)));
}

// ---- messages: the last 50 from history, then live; one line per offset ----

let epoch = null;
const shown = new Map(); // offset → <li>

function clear() {
  epoch = null;
  shown.clear();
  $("messages").replaceChildren();
}

function add(pub) {
  if (epoch !== null && pub.epoch !== epoch) clear(); // a new history: what we show is stale
  epoch = pub.epoch;
  if (shown.has(pub.offset) || typeof pub.data?.text !== "string") return;
  const user = pub.info?.user ?? "?";
  const li = el("li", { "data-offset": pub.offset },
    el("span", { class: "who", style: `color:${colorOf(user)}` }, user),
    el("span", { class: "text" }, pub.data.text),
    el("time", {}, clock(pub.time)));
  // History and live publications may arrive in either order: keep them in offset order.
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const after = [...shown.entries()].filter(([o]) => o > pub.offset).sort((a, b) => a[0] - b[0])[0];
  list.insertBefore(li, after ? after[1] : null);
  shown.set(pub.offset, li);
  if (atBottom || user === me) list.scrollTop = list.scrollHeight;
}

async function loadRecent() {
  const page = await client.history(channel, { limit: 50, reverse: true }); // newest first
  for (const pub of page.publications.reverse()) add(pub);
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

// ---- who is here: presence per user (your tabs are one), kept up by join and leave ----

const here = people(client, channel, me, (users) =>
  $("people").replaceChildren(...users.map((user) =>
    el("li", { "data-user": user }, el("i", { class: "dot", style: `background:${colorOf(user)}` }),
      user === me ? `${user} (you)` : user))));

let loaded = false;
client.subscribe(channel, {
  onPublication: add,
  onSubscribed: () => {
    if (!loaded) { loaded = true; loadRecent(); } // later, the subscription resumes by itself
    here.refresh();
  },
  onReset: () => {
    // The hub could not fill the gap: say so, and start again from history.
    clear();
    notice("Missed messages while disconnected — reloaded the last 50.");
    loadRecent();
  },
  onJoin: here.onJoin,
  onLeave: here.onLeave,
});

// ---- typing: live signals (ephemeral), never stored; only the latest per user matters ----

const typing = new Map(); // user → until (ms)

function renderTyping() {
  const now = Date.now();
  for (const [user, until] of typing) if (until < now) typing.delete(user);
  const who = [...typing.keys()];
  $("typing").textContent = !who.length ? ""
    : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
}
setInterval(renderTyping, 500);

client.subscribe(typingChannel, {
  onPublication: (pub) => {
    const user = pub.info?.user;
    if (!user || user === me) return;
    if (pub.data?.typing) typing.set(user, Date.now() + 3000);
    else typing.delete(user);
    renderTyping();
  },
});

function signal(isTyping) {
  client.publish(typingChannel, { typing: isTyping }, { ephemeral: true, key: me }).catch(() => {});
}

let lastSignal = 0;
$("text").addEventListener("input", () => {
  if (!$("text").value || Date.now() - lastSignal < 1500) return;
  lastSignal = Date.now();
  signal(true);
});

const newId = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  lastSignal = 0;
  signal(false);
  try {
    // The id makes a retry safe: the hub publishes one id once.
    await client.publish(channel, { text }, { id: newId() });
  } catch (error) {
    notice(`Not sent (${error.code || error.message}): ${text}`);
  }
});
