// Channels: the busiest by subscribers and by publication rate, searchable; and one channel's
// page: who is there (per user), its last publications, a publish console, per-user actions.

import { get, post } from "./api.js";
import { confirmAction, h, table } from "./dom.js";
import { refreshing } from "./overview.js";

const TOP = 20;
const LIST_AT_MOST = 500; // presence entries a channel page lists

function channelLink(name) {
  return h("a", { href: `#channel/${encodeURIComponent(name)}` }, name);
}

export function channels(view) {
  const search = h("input", { id: "channel-search", type: "search", placeholder: "name contains…" });
  const node = h("select", { id: "channel-node" }, h("option", { value: "" }, "every node"));
  const bySubs = h("div", { id: "by-subscribers" });
  const byRate = h("div", { id: "by-rate" });
  const note = h("p", { class: "muted" });
  view.replaceChildren(
    h("h2", {}, "Channels"),
    h("div", { class: "inline" }, h("label", {}, "Search", search), h("label", {}, "Node", node)),
    note,
    h("h2", {}, "Most subscribers"), bySubs, h("h2", {}, "Busiest (publications per second)"), byRate,
  );
  const columns = [
    { title: "channel", cell: (c) => channelLink(c.channel) },
    { title: "subscribers", num: true, cell: (c) => c.subscribers },
    { title: "publications/s", num: true, cell: (c) => c.publication_rate },
    { title: "nodes", num: true, cell: (c) => c.nodes.length },
  ];
  const load = async () => {
    const q = search.value.trim();
    const filter = { q, node: node.value };
    const [subs, rate, info] = await Promise.all([
      get("api/channels", { sort: "subscribers", limit: TOP, ...filter }),
      get("api/channels", { sort: "rate", limit: TOP, ...filter }),
      get("api/info"),
    ]);
    const known = new Set([...node.options].map((o) => o.value));
    for (const n of info.nodes) {
      if (n.state === "up" && !known.has(n.id)) node.append(h("option", { value: n.id }, n.id));
    }
    note.textContent = `${subs.total} channels with subscribers`
      + (subs.complete ? "" : " (the busiest of each node: some nodes hold more)");
    bySubs.replaceChildren(table(columns, subs.channels, (c) => ({ dataset: { channel: c.channel } })));
    const busy = rate.channels.filter((c) => c.publication_rate > 0);
    byRate.replaceChildren(busy.length ? table(columns, busy)
      : h("p", { class: "muted" }, "No publication in the last second."));
  };
  // One request pair once typing pauses, not one per key: each walks every channel of the hub.
  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => load().catch(() => {}), 250);
  });
  node.addEventListener("change", () => load().catch(() => {}));
  return refreshing(load);
}

export function channel(view, name) {
  const presence = h("div", { id: "presence" });
  const history = h("div", { id: "history" });
  const data = h("textarea", { id: "publish-data", spellcheck: "false" }, '{"text": "hello"}');
  const ephemeral = h("input", { id: "publish-ephemeral", type: "checkbox" });
  const result = h("p", { id: "publish-result", role: "status" });
  const publish = async (event) => {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(data.value);
    } catch (error) {
      result.className = "error";
      result.textContent = `not JSON: ${error.message}`;
      return;
    }
    try {
      const body = { channel: name, data: parsed };
      if (ephemeral.checked) body.ephemeral = true;
      const ok = await post("api/publish", body);
      result.className = "ok";
      result.textContent = ephemeral.checked ? "sent (ephemeral: not stored)"
        : `published at offset ${ok.offset}`;
      await loadHistory();
    } catch (error) {
      result.className = "error";
      result.textContent = `refused: ${error.message}`;
    }
  };
  view.replaceChildren(
    h("h2", {}, "Channel ", h("code", { id: "channel-name" }, name)),
    h("h2", {}, "Presence"), presence,
    h("h2", {}, "Publish"),
    h("form", { class: "inline", id: "publish", onsubmit: publish },
      h("label", {}, "data (JSON)", data),
      h("label", {}, "ephemeral", ephemeral),
      h("button", { type: "submit" }, "Publish"), result),
    h("h2", {}, "Last publications"), history,
  );
  const action = (label, text, fn) => h("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      if (!confirmAction(text)) return;
      try {
        await fn();
        await loadPresence();
      } catch (error) {
        alert(`refused: ${error.message}`);
      }
    },
  }, label);
  const loadPresence = async () => {
    // A crowded channel is counted, not listed: the listing grows with every client.
    const counts = await get("api/presence_stats", { channel: name });
    if (counts.clients > LIST_AT_MOST) {
      presence.replaceChildren(h("p", {},
        `${counts.clients} clients, ${counts.users} users: too many to list here`));
      return;
    }
    const body = await get("api/presence", { channel: name });
    presence.replaceChildren(
      h("p", { class: "muted" }, `${body.clients.length} clients, ${body.users.length} users, `
        + `${body.anonymous} anonymous`),
      table([
        { title: "user", cell: (u) => u.user },
        { title: "clients", num: true, cell: (u) => u.clients.length },
        { title: "transports", cell: (u) => [...new Set(body.clients
          .filter((c) => c.user === u.user).map((c) => c.transport))].join(", ") },
        { title: "", cell: (u) => [
          action("Unsubscribe", `Unsubscribe ${u.user} from ${name} on every node?`,
            () => post("api/unsubscribe", { user: u.user, channel: name })),
          " ",
          action("Disconnect", `Disconnect every session of ${u.user}?`,
            () => post("api/disconnect", { user: u.user })),
        ] },
      ], body.users, (u) => ({ dataset: { user: u.user } })),
    );
  };
  const loadHistory = async () => {
    const body = await get("api/history", { channel: name, reverse: 1, limit: 20 });
    history.replaceChildren(table([
      { title: "offset", num: true, cell: (p) => p.offset },
      { title: "time", cell: (p) => new Date(p.time).toISOString().replace("T", " ").slice(0, 19) },
      { title: "data", cell: (p) => h("pre", {}, JSON.stringify(p.data)) },
    ], body.publications));
  };
  return refreshing(async () => { await Promise.all([loadPresence(), loadHistory()]); }, 3000);
}
