// Publish: a form that sends one event (POST /api/v1/events).

import { api } from "../api.js";
import { field, h, json, notice, replace } from "../dom.js";

export function render(main) {
  const topic = h("input", { id: "pub-topic", name: "type", required: true, size: 40, placeholder: "order.created" });
  const source = h("input", { id: "pub-source", name: "source", size: 30, value: "console" });
  const priority = h("input", { id: "pub-priority", name: "priority", type: "number", min: 1, max: 10, value: 5 });
  const key = h("input", { id: "pub-key", name: "key", size: 30 });
  const payload = h("textarea", { id: "pub-payload", name: "payload", rows: 8, cols: 60 }, "{\n  \n}");
  const result = h("div", { id: "pub-result" });
  const form = h(
    "form",
    { id: "publish-form", class: "card" },
    field("Topic", topic),
    field("Source", source),
    field("Priority", priority, "1 (lowest) to 10 (system)"),
    field("Key", key, "ordering key; optional"),
    field("Payload (JSON)", payload),
    h("button", { type: "submit", id: "pub-send" }, "Publish"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let body;
    try {
      body = payload.value.trim() ? JSON.parse(payload.value) : null;
    } catch (err) {
      replace(result, notice("error", `The payload is not JSON: ${err.message}`));
      return;
    }
    const event = { type: topic.value.trim(), payload: body, priority: Number(priority.value) };
    if (source.value.trim()) event.source = source.value.trim();
    if (key.value.trim()) event.key = key.value.trim();
    try {
      const answer = await api("/api/v1/events", { method: "POST", body: event });
      replace(result, notice("ok", `Published ${answer.event_id}.`), json(answer));
    } catch (err) {
      replace(result, notice("error", `Refused: ${err.message}`));
    }
  });
  main.append(h("h1", {}, "Publish an event"), form, result);
  return null;
}
