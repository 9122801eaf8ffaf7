// Dashboard: per device, the latest reading at once (`latest`), gauges and a sparkline at 10 Hz,
// and online/offline from presence (the device's own user in its channel).
import { start, el, clock } from "/demo/common.js";
import { Series, draw, gauge } from "/demo/sparkline.js";

const { client } = start("dashboard");
const devices = await (await fetch("/demo/devices.json")).json();

for (const device of devices) {
  const channel = `iot:${device.id}`;
  const user = `device:${device.id}`;
  const state = el("span", { class: "state" }, "…");
  const temp = el("canvas");
  const hum = el("canvas");
  const tempText = el("figcaption", {}, "—");
  const humText = el("figcaption", {}, "—");
  const spark = el("canvas", { class: "spark" });
  const when = el("small", { class: "hint" }, "");
  const card = el("section", { class: "card device", "data-device": device.id, "data-updates": "0" },
    el("header", {}, el("h2", {}, device.label), state),
    el("div", { class: "gauges" },
      el("figure", {}, temp, tempText),
      el("figure", {}, hum, humText)),
    spark, when);
  document.getElementById("devices").append(card);
  const series = new Series(100); // ten seconds at 10 Hz
  const range = { min: device.temperature - 6, max: device.temperature + 6 };
  let last = null;
  let pending = false;
  let updates = 0;

  const online = (yes) => {
    card.dataset.online = String(yes);
    card.classList.toggle("offline", !yes);
    state.className = `state ${yes ? "online" : "offline"}`;
    state.textContent = yes ? "online" : "offline";
  };
  const render = () => {
    pending = false;
    if (!last) return;
    gauge(temp, last.temperature, { ...range, color: "#ea580c" });
    gauge(hum, last.humidity, { min: 0, max: 100, color: "#0284c7" });
    tempText.replaceChildren(`${last.temperature.toFixed(1)} °C`, el("small", {}, "temperature"));
    humText.replaceChildren(`${last.humidity.toFixed(0)} %`, el("small", {}, "humidity"));
    draw(spark, series.values, { color: "#ea580c" });
  };
  const checkPresence = async () => {
    try {
      const { users = [] } = await client.presence(channel);
      online(users.some((u) => u.user === user));
    } catch (error) {
      console.warn("presence", error);
    }
  };
  // A long-polling client gets no join/leave between polls: it asks.
  setInterval(() => { if (client.transport === "poll") checkPresence(); }, 2000);

  client.subscribe(channel, {
    latest: true,
    onPublication: (pub) => {
      last = pub.data;
      series.push(pub.data.temperature);
      card.dataset.updates = String(++updates);
      when.textContent = `last reading ${clock(pub.time)}`;
      if (!pending) { pending = true; requestAnimationFrame(render); }
    },
    onSubscribed: checkPresence,
    onJoin: (e) => { if (e.user === user) online(true); },
    onLeave: (e) => { if (e.user === user) online(false); },
  });
}
