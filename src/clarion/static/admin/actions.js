// Actions on users, each after a confirmation: disconnect (optionally refusing them a while),
// and a server-side unsubscribe from a channel.

import { post } from "./api.js";
import { confirmAction, h } from "./dom.js";

const REFUSE = [["0", "no"], ["60", "1 minute"], ["600", "10 minutes"], ["3600", "1 hour"],
  ["86400", "1 day"]];

export function actions(view) {
  const user = h("input", { id: "disconnect-user", required: true });
  const refuse = h("select", { id: "disconnect-until" },
    REFUSE.map(([value, text]) => h("option", { value }, text)));
  const done = h("p", { id: "action-result", role: "status" });
  const unsubUser = h("input", { id: "unsubscribe-user", required: true });
  const unsubChannel = h("input", { id: "unsubscribe-channel", required: true });
  const run = (text, fn) => async (event) => {
    event.preventDefault();
    if (!confirmAction(text())) return;
    try {
      await fn();
      done.className = "ok";
      done.textContent = "done";
    } catch (error) {
      done.className = "error";
      done.textContent = `refused: ${error.message}`;
    }
  };
  view.replaceChildren(
    h("h2", {}, "Disconnect a user"),
    h("form", {
      class: "inline",
      id: "disconnect",
      onsubmit: run(() => `Disconnect every session of ${user.value} on every node?`, () => {
        const body = { user: user.value };
        const seconds = Number(refuse.value);
        if (seconds > 0) body.until = Math.floor(Date.now() / 1000) + seconds;
        return post("api/disconnect", body);
      }),
    }, h("label", {}, "user (token sub)", user), h("label", {}, "refuse new connections for", refuse),
    h("button", { type: "submit", class: "danger" }, "Disconnect")),
    h("h2", {}, "Unsubscribe a user from a channel"),
    h("form", {
      class: "inline",
      id: "unsubscribe",
      onsubmit: run(() => `Unsubscribe ${unsubUser.value} from ${unsubChannel.value}?`,
        () => post("api/unsubscribe", { user: unsubUser.value, channel: unsubChannel.value })),
    }, h("label", {}, "user", unsubUser), h("label", {}, "channel", unsubChannel),
    h("button", { type: "submit", class: "danger" }, "Unsubscribe")),
    done,
  );
  return () => {};
}
