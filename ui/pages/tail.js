// Live tail: an SSE stream of the events matching topic patterns and a
// filter (the protocol's syntax), newest first, each expandable as JSON.
// The list keeps at most MAX_ROWS events; while paused, arrivals are held
// up to the same bound and the oldest held ones are dropped (counted).

import { stream, ApiError } from "../api.js";
import { field, h, json, notice, num, replace } from "../dom.js";

export const MAX_ROWS = 500;

export function render(main, { params }) {
  const topics = h("input", { id: "tail-topics", name: "topics", value: params.get("topics") || "#", size: 40 });
  const filter = h("input", { id: "tail-filter", name: "filter", value: params.get("filter") || "", size: 50, placeholder: "priority:gte:7  or  {\"payload.region\":\"eu\"}" });
  const startBtn = h("button", { type: "submit", id: "tail-start" }, "Start");
  const pauseBtn = h("button", { type: "button", id: "tail-pause", disabled: true }, "Pause");
  const clearBtn = h("button", { type: "button", id: "tail-clear", class: "secondary" }, "Clear");
  const status = h("div", { id: "tail-status", class: "status-line" });
  const counts = h("span", { id: "tail-counts", class: "muted" });
  const list = h("ol", { id: "tail-events", class: "events" });
  const form = h(
    "form",
    { class: "toolbar", id: "tail-form" },
    field("Topics", topics, "comma-separated patterns: * one segment, # any"),
    field("Filter", filter, "field:op:value or a JSON filter; empty for all"),
    h("div", { class: "buttons" }, startBtn, pauseBtn, clearBtn),
  );
  main.append(h("h1", {}, "Live tail"), form, status, counts, list);

  let controller = null;
  let paused = false;
  let held = [];
  let received = 0;
  let droppedWhilePaused = 0;

  function showCounts() {
    const shown = list.children.length;
    counts.textContent = `${num(received)} received · ${num(shown)} shown (last ${MAX_ROWS})` +
      (paused ? ` · ${num(held.length)} held while paused` : "") +
      (droppedWhilePaused ? ` · ${num(droppedWhilePaused)} dropped while paused` : "");
  }

  function row(delivery) {
    const e = delivery.event || {};
    const summary = h(
      "summary",
      {},
      h("time", {}, (e.time || "").replace("T", " ").replace(/\.\d+/, "").replace("Z", "")),
      h("code", { class: "topic" }, e.type || "?"),
      h("span", { class: "prio" }, `p${e.priority ?? "?"}`),
      h("span", { class: "muted" }, e.source || ""),
      h("span", { class: "muted id" }, e.id || ""),
    );
    return h("li", { class: "event", dataset: { topic: e.type || "", id: e.id || "" } }, h("details", {}, summary, json(e)));
  }

  function show(delivery) {
    list.prepend(row(delivery));
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  }

  function onMessage(message) {
    if (message.event === "error") {
      let text = message.data;
      try {
        text = JSON.parse(message.data).message || text;
      } catch {
        // keep the raw text
      }
      replace(status, notice("error", `Stream ended: ${text}`));
      return;
    }
    if (message.event === "overflow") {
      replace(status, notice("info", "The server dropped events: this tail fell behind."));
      return;
    }
    let delivery;
    try {
      delivery = JSON.parse(message.data);
    } catch {
      return;
    }
    received += 1;
    if (paused) {
      held.push(delivery);
      if (held.length > MAX_ROWS) {
        held.shift();
        droppedWhilePaused += 1;
      }
    } else {
      show(delivery);
    }
    showCounts();
  }

  function stop() {
    if (controller) controller.abort();
    controller = null;
    startBtn.textContent = "Start";
    pauseBtn.disabled = true;
  }

  function start() {
    stop();
    const query = new URLSearchParams();
    query.set("topics", topics.value.trim() || "#");
    if (filter.value.trim()) query.set("filter", filter.value.trim());
    // The page URL carries the selection (never the token), for bookmarks.
    history.replaceState(null, "", `/ui/tail?${query}`);
    controller = new AbortController();
    const mine = controller;
    startBtn.textContent = "Restart";
    pauseBtn.disabled = false;
    replace(status, h("span", { id: "tail-live", class: "good" }, `● live: ${query.get("topics")}${query.get("filter") ? " where " + query.get("filter") : ""}`));
    stream(`/api/v1/events/stream?${query}`, onMessage, mine.signal)
      .then(() => {
        if (controller === mine) replace(status, notice("info", "The stream ended."));
      })
      .catch((e) => {
        if (mine.signal.aborted) return;
        const text = e instanceof ApiError ? `${e.code}: ${e.message}` : e.message;
        replace(status, notice("error", `Tail refused: ${text}`));
      })
      .finally(() => {
        if (controller === mine) stop();
      });
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.classList.toggle("active", paused);
    if (!paused) {
      for (const d of held) show(d);
      held = [];
    }
    showCounts();
  });
  clearBtn.addEventListener("click", () => {
    list.replaceChildren();
    held = [];
    received = 0;
    droppedWhilePaused = 0;
    showCounts();
  });
  showCounts();
  start();
  return stop;
}
