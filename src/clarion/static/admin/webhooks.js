// Webhook endpoints: state, backlog, last error, dead letters, and replaying them. Secrets are
// never shown (the list does not carry them) and URLs lose their user, password and query.

import { get, post } from "./api.js";
import { confirmAction, h, safeUrl, table } from "./dom.js";
import { refreshing } from "./overview.js";

function state(w) {
  if (w.disabled) return `disabled: ${w.disabled_reason ?? ""}`;
  if (w.backlog > 0 && w.last_error) return "retrying";
  return "delivering";
}

export function webhooks(view) {
  const list = h("div", { id: "webhooks" });
  view.replaceChildren(h("h2", {}, "Webhooks"), list);
  const load = async () => {
    const body = await get("api/webhooks");
    const endpoints = body.webhooks || [];
    if (!endpoints.length) {
      list.replaceChildren(h("p", { class: "muted" }, "No webhook endpoint."));
      return;
    }
    list.replaceChildren(table([
      { title: "id", cell: (w) => w.id },
      { title: "url", cell: (w) => safeUrl(w.url) },
      { title: "channels", cell: (w) => w.channels.join(", ") },
      { title: "state", cls: "state", cell: state },
      { title: "backlog", num: true, cls: "backlog", cell: (w) => w.backlog },
      { title: "last error", cell: (w) => w.last_error ?? "–" },
      { title: "dead letters", num: true, cls: "dead", cell: (w) => w.dead_letters },
      { title: "", cell: (w) => h("button", {
        type: "button",
        class: "replay",
        disabled: w.dead_letters === 0,
        onclick: async () => {
          if (!confirmAction(`Deliver the ${w.dead_letters} dead letters of ${w.id} again?`)) return;
          try {
            await post(`api/webhooks/${encodeURIComponent(w.id)}/dead-letters/replay`, {});
            await load();
          } catch (error) {
            alert(`refused: ${error.message}`);
          }
        },
      }, "Replay dead letters") },
    ], endpoints, (w) => ({ dataset: { webhook: w.id } })));
  };
  return refreshing(load, 3000);
}
