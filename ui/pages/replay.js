// Replay: queue retained history (time range, topics, filter) into a
// durable subscription (POST /api/v1/subscriptions/{name}/replay).

import { api } from "../api.js";
import { field, h, notice, num, replace } from "../dom.js";

/** `datetime-local` value (local time) to RFC 3339, or undefined. */
function rfc3339(value) {
  return value ? new Date(value).toISOString() : undefined;
}

export function render(main, { me }) {
  main.append(h("h1", {}, "Replay history into a subscription"));
  if (!me.admin) {
    main.append(notice("info", "Replay needs an admin token."));
    return null;
  }
  const name = h("select", { id: "replay-subscription", name: "subscription", required: true });
  const topics = h("input", { id: "replay-topics", name: "topics", size: 40, placeholder: "all topics" });
  const filter = h("input", { id: "replay-filter", name: "filter", size: 50, placeholder: "priority:gte:7" });
  const from = h("input", { id: "replay-from", name: "from", type: "datetime-local", step: 1 });
  const to = h("input", { id: "replay-to", name: "to", type: "datetime-local", step: 1 });
  const limit = h("input", { id: "replay-limit", name: "limit", type: "number", min: 1, placeholder: "all" });
  const result = h("div", { id: "replay-result" });
  const form = h(
    "form",
    { id: "replay-form", class: "card" },
    field("Subscription", name),
    field("Topics", topics, "comma-separated patterns; empty for all"),
    field("Filter", filter, "field:op:value or a JSON filter"),
    field("From", from, "your local time"),
    field("To", to),
    field("Limit", limit, "most events, oldest first"),
    h("button", { type: "submit", id: "replay-send" }, "Replay"),
  );
  api("/api/v1/subscriptions")
    .then((list) => {
      const names = list.subscriptions.map((s) => s.spec.name).sort();
      replace(name, names.map((n) => h("option", { value: n }, n)));
      if (!names.length) replace(result, notice("info", "There is no durable subscription to replay into."));
    })
    .catch((e) => replace(result, notice("error", e.message)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {};
    const t = topics.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (t.length) body.topics = t;
    const f = filter.value.trim();
    if (f) {
      try {
        body.filter = f.startsWith("{") ? JSON.parse(f) : f;
      } catch (err) {
        replace(result, notice("error", `The filter is not JSON: ${err.message}`));
        return;
      }
    }
    if (from.value) body.from = rfc3339(from.value);
    if (to.value) body.to = rfc3339(to.value);
    if (limit.value) body.limit = Number(limit.value);
    try {
      const answer = await api(`/api/v1/subscriptions/${encodeURIComponent(name.value)}/replay`, { method: "POST", body });
      replace(result, notice("ok", `${num(answer.count)} events queued into ${name.value}.`));
    } catch (err) {
      replace(result, notice("error", `Refused: ${err.message}`));
    }
  });
  main.append(form, result);
  return null;
}
