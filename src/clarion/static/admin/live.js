// Live figures over clarion itself: the page's own WebSocket session, connected with the API key
// (in the connect op, never in a URL), subscribes to the hub's metrics channel; every node
// publishes a sample there each second. Charts are uPlot, shipped with the package.

import uPlot from "./vendor/uPlot.esm.js";
import { connect } from "../clarion.js";
import { HUB } from "./api.js";
import { h } from "./dom.js";

export const METRICS_CHANNEL = "_clarion:metrics";
const WINDOW = 300; // seconds kept and charted

const CHARTS = [
  { id: "connections", title: "Connections", series: [["connections", "sum"]] },
  { id: "deliveries", title: "Deliveries / s", series: [["deliveries_per_second", "sum"]] },
  { id: "publications", title: "Publications / s", series: [["publications_per_second", "sum"]] },
  { id: "latency", title: "p99 publish-to-write (ms)", series: [["p99_ms", "max"]] },
  {
    id: "trouble",
    title: "Resets and slow-consumer closes / s",
    series: [["resets_per_second", "sum", "resets"], ["slow_closes_per_second", "sum", "slow closes"]],
  },
];
const COLOURS = ["#2757d6", "#d97706"];
const HEIGHT = 180;

// The width of a card's content (inside its padding); before the card is laid out, 420, the
// narrowest the grid makes it.
function chartWidth(box) {
  const style = getComputedStyle(box);
  const inner = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return inner > 0 ? Math.floor(inner) : 420;
}

export class Live {
  constructor(apiKey, onState) {
    this.seconds = new Map(); // second -> node -> sample
    this.nodes = new Set();
    this.plots = new Map();
    this.resizer = null; // fits the charts to their cards (mount)
    this.onState = onState;
    this.dirty = false;
    this.client = connect(HUB.href, {
      transports: ["ws"],        // the key travels in the connect op, which only WebSocket has
      getToken: () => apiKey,
      backoffBase: 300,
      backoffCap: 5000,
      onState: (state) => onState(state),
    });
    this.sub = this.client.subscribe(METRICS_CHANNEL, {
      onPublication: (pub) => this.add(pub.data),
    });
    // The last samples kept in history fill the charts at once, and the gap after a reconnect.
    // Read over the WebSocket once it is up: before, the client would ask the HTTP client API,
    // which no key opens the hub's own channels to.
    this.client.on("connected", () => {
      this.client.history(METRICS_CHANNEL, { reverse: true, limit: 100 })
        .then((page) => { for (const pub of page.publications || []) this.add(pub.data); })
        .catch((error) => console.warn("metrics history failed", error));
    });
    this.timer = setInterval(() => this.redraw(), 1000);
  }

  add(sample) {
    if (!sample || typeof sample.time !== "number" || typeof sample.node !== "string") return;
    const second = Math.floor(sample.time);
    let bucket = this.seconds.get(second);
    if (!bucket) this.seconds.set(second, (bucket = new Map()));
    bucket.set(sample.node, sample);
    this.nodes.add(sample.node);
    const oldest = Math.floor(Date.now() / 1000) - WINDOW;
    for (const s of this.seconds.keys()) if (s < oldest) this.seconds.delete(s);
    this.dirty = true;
  }

  // The charts' columns: one x per second that has samples, each series summed over the nodes
  // (or their maximum, for a percentile).
  data(chart) {
    const xs = [...this.seconds.keys()].sort((a, b) => a - b);
    const columns = [xs];
    for (const [field, how] of chart.series) {
      columns.push(xs.map((x) => {
        const values = [...this.seconds.get(x).values()]
          .map((s) => s[field]).filter((v) => typeof v === "number");
        if (!values.length) return null;
        return how === "max" ? Math.max(...values) : values.reduce((a, b) => a + b, 0);
      }));
    }
    return columns;
  }

  mount(container) {
    this.plots.clear();
    this.resizer?.disconnect();
    container.replaceChildren();
    for (const chart of CHARTS) {
      const box = h("div", { class: "chart", id: `chart-${chart.id}` }, h("h3", {}, chart.title));
      container.append(box);
      const plot = new uPlot({
        width: chartWidth(box),
        height: HEIGHT,
        legend: { show: chart.series.length > 1 },
        scales: { x: { time: true } },
        series: [{}, ...chart.series.map(([, , label], i) => ({
          label: label || chart.title, stroke: COLOURS[i], width: 2, spanGaps: true,
        }))],
        axes: [{}, { size: 50 }],
      }, this.data(chart), box);
      this.plots.set(chart, plot);
    }
    // The grid's cards grow with the window: each chart fills its card.
    this.resizer = new ResizeObserver(() => {
      for (const plot of this.plots.values()) {
        const width = chartWidth(plot.root.parentElement);
        if (width !== plot.width) plot.setSize({ width, height: HEIGHT });
      }
    });
    this.resizer.observe(container);
    this.dirty = true;
    this.redraw();
  }

  latest() {
    const seconds = [...this.seconds.keys()].sort((a, b) => b - a);
    return seconds.length ? this.seconds.get(seconds[0]) : new Map();
  }

  redraw() {
    if (!this.dirty) return;
    this.dirty = false;
    for (const [chart, plot] of this.plots) {
      if (!plot.root.isConnected) continue;
      const columns = this.data(chart);
      plot.setData(columns);
      // What the chart shows last, for whoever reads the page without its canvas (tests).
      const box = plot.root.parentElement;
      box.dataset.points = String(columns[0].length);
      box.dataset.last = String(columns[1][columns[1].length - 1] ?? "");
    }
  }

  close() {
    clearInterval(this.timer);
    this.resizer?.disconnect();
    for (const plot of this.plots.values()) plot.destroy();
    this.client.close();
  }
}
