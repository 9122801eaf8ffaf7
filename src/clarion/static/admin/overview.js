// The cluster: every node with its figures (a node that stopped announcing shows as gone), and
// the live charts.

import { get } from "./api.js";
import { duration, h, table } from "./dom.js";

const TRANSPORTS = ["ws", "sse", "poll", "stomp"];

export async function overview(view, live) {
  const nodes = h("div", { id: "nodes" });
  const charts = h("div", { class: "grid", id: "charts" });
  view.replaceChildren(h("h2", {}, "Nodes"), nodes, h("h2", {}, "Live"), charts);
  live.mount(charts);
  return refreshing(async () => {
    const info = await get("api/info");
    const up = info.nodes.filter((n) => n.state === "up").length;
    nodes.replaceChildren(
      h("p", { class: "muted" }, `${up} of ${info.nodes.length} nodes up · engine ${info.engine}`),
      // replaceChildren, unlike h(), would show a null as the text "null".
      ...(info.engine_error ? [h("p", { class: "error", id: "engine-error" },
        `The engine does not answer (${info.engine_error}): the other nodes are unknown.`)] : []),
      table([
        { title: "node", cell: (n) => n.id + (n.id === info.node ? " (this page's)" : "") },
        { title: "state", cls: "state", cell: (n) => n.state },
        { title: "address", cell: (n) => n.address ?? "–" },
        { title: "version", cell: (n) => n.version },
        { title: "uptime", num: true, cell: (n) => duration(n.uptime) },
        ...TRANSPORTS.map((t) => ({
          title: t, num: true, cls: `conn-${t}`, cell: (n) => n.connections?.[t] ?? 0,
        })),
        { title: "channels", num: true, cell: (n) => n.channels_total },
        { title: "deliveries/s", num: true, cell: (n) => n.deliveries_per_second },
        { title: "publications/s", num: true, cell: (n) => n.publications_per_second },
      ], info.nodes, (n) => ({ class: n.state, dataset: { node: n.id } })),
    );
  });
}

// Run ``fn`` now and every two seconds until the view changes; failures show in place.
export function refreshing(fn, every = 2000) {
  let stopped = false;
  let timer = null;
  const round = async () => {
    try {
      await fn();
    } catch (error) {
      console.warn("refresh failed", error);
    }
    if (!stopped) timer = setTimeout(round, every);
  };
  round();
  return () => { stopped = true; clearTimeout(timer); };
}
