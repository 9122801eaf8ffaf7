// Ticker: one subscription per symbol, `latest` first so a price shows at once, then live.
import { start, el, clock } from "/demo/common.js";
import { Series, draw } from "/demo/sparkline.js";

const SYMBOLS = ["BTC-USD", "ETH-USD", "ACME", "EUR-USD"];
const { client } = start("ticker");

for (const symbol of SYMBOLS) {
  const price = el("div", { class: "price" }, "—");
  const change = el("div", { class: "change" }, "");
  const canvas = el("canvas");
  const when = el("small", { class: "hint" }, "");
  const card = el("section", { class: "card quote", "data-symbol": symbol, "data-updates": "0" },
    el("strong", {}, symbol), price, change, canvas, when);
  document.getElementById("quotes").append(card);
  const series = new Series(240); // a minute at four prices a second
  let pending = false;
  let updates = 0;
  let oldest = Infinity; // offsets of the prices charted
  let newest = 0;

  client.subscribe(`ticker:${symbol}`, {
    latest: true,
    onPublication: (pub) => {
      const { price: p, open, decimals } = pub.data;
      const diff = ((p - open) / open) * 100;
      price.textContent = p.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
      change.textContent = `${diff >= 0 ? "▲" : "▼"} ${Math.abs(diff).toFixed(2)}% since open`;
      change.className = `change ${diff >= 0 ? "up" : "down"}`;
      when.textContent = `at ${clock(pub.time)} · offset ${pub.offset}`;
      card.dataset.updates = String(++updates);
      card.dataset.price = String(p);
      if (pub.offset > newest) { // history may have charted it already
        series.push(p);
        newest = pub.offset;
        oldest = Math.min(oldest, pub.offset);
      }
      if (!pending) { // one drawing per frame, however many prices arrived
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          draw(canvas, series.values, { color: diff >= 0 ? "#16a34a" : "#dc2626" });
        });
      }
    },
    // Missed prices are not worth replaying: the next one is the truth.
    onReset: () => {},
    // The chart starts with the last minute, read backwards from history.
    onSubscribed: async () => {
      if (series.filled) return;
      series.filled = true;
      const page = await client.history(`ticker:${symbol}`, { limit: 240, reverse: true });
      const older = page.publications.filter((pub) => pub.offset < oldest).reverse();
      if (!older.length) return;
      series.values.unshift(...older.map((pub) => pub.data.price));
      series.values.splice(0, Math.max(0, series.values.length - series.size));
      oldest = older[0].offset;
      newest = Math.max(newest, older[older.length - 1].offset);
    },
  });
}
