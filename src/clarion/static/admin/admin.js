// The admin page: log in with the API key, then one view at a time, chosen by the URL's hash.

import { ApiError, call, key } from "./api.js";
import { actions } from "./actions.js";
import { channel, channels } from "./channels.js";
import { Live } from "./live.js";
import { overview } from "./overview.js";
import { webhooks } from "./webhooks.js";

const $ = (id) => document.getElementById(id);
let live = null;
let stop = () => {};

function showLogin(message = "") {
  stop();
  if (live) live.close();
  live = null;
  $("nav").hidden = true;
  $("view").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("key").value = "";
  $("key").focus();
}

// A key is good when the hub answers the server API with it; the page shows nothing before.
async function accepted(candidate) {
  try {
    await call("GET", "api/info", { apiKey: candidate });
    return null;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      return `refused: ${error.message}`;
    }
    return `the hub did not answer: ${error.message}`;
  }
}

function route() {
  stop();
  const hash = decodeURIComponent(location.hash.slice(1)) || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", hash.startsWith(a.getAttribute("href").slice(1)));
  }
  const view = $("view");
  if (hash.startsWith("channel/")) stop = channel(view, hash.slice("channel/".length));
  else if (hash === "channels") stop = channels(view);
  else if (hash === "webhooks") stop = webhooks(view);
  else if (hash === "actions") stop = actions(view);
  else {
    let ended = false;
    let inner = () => {};
    overview(view, live).then((s) => { if (ended) s(); else inner = s; });
    stop = () => { ended = true; inner(); };
  }
}

function start(apiKey) {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  const badge = $("live-state");
  live = new Live(apiKey, (state) => {
    badge.textContent = state === "connected" ? "live" : `not live (${state})`;
    badge.classList.toggle("live", state === "connected");
  });
  route();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = $("key").value;
  const refused = await accepted(candidate);
  if (refused) {
    showLogin(refused);
    return;
  }
  key.set(candidate);
  start(candidate);
});
$("logout").addEventListener("click", () => {
  key.clear();
  showLogin();
});
window.addEventListener("hashchange", () => { if (live) route(); });

const stored = key.get();
if (stored) {
  accepted(stored).then((refused) => {
    if (refused) {
      key.clear();
      showLogin(refused);
    } else {
      start(stored);
    }
  });
} else {
  showLogin();
}
