// Subscriptions: every durable subscription with its queues, consumers,
// lag and spec (GET /api/v1/subscriptions, the lag gauge of /metrics), and
// this replica's WebSocket and SSE subscribers with their patterns
// (GET /api/v1/subscribers) and connection counts (GET /api/v1/stats).

import { api, gauge, text } from "../api.js";
import { h, json, notice, num, replace } from "../dom.js";

const INTERVAL_MS = 3000;

export function render(main, { me }) {
  main.append(h("h1", {}, "Subscriptions"));
  if (!me.admin) {
    main.append(notice("info", "Listing subscriptions needs an admin token. Open a subscription's dead letters by name on the Dead letters page."));
    return null;
  }
  const status = h("div", { id: "subs-status" });
  const table = h("table", { id: "subscriptions", class: "grid" });
  const live = h("dl", { id: "live-subscribers", class: "facts" });
  const subscribers = h("table", { id: "subscribers", class: "grid" });
  main.append(status, table, h("h2", {}, "Live and SSE subscribers (this replica)"), live, subscribers);
  const open = new Set();
  let stopped = false;

  async function tick() {
    let list, stats, metrics, listed;
    try {
      [list, stats, metrics, listed] = await Promise.all([
        api("/api/v1/subscriptions"),
        api("/api/v1/stats"),
        text("/metrics").catch(() => ""),
        api("/api/v1/subscribers"),
      ]);
    } catch (e) {
      if (!stopped) replace(status, notice("error", e.message));
      return;
    }
    if (stopped) return;
    replace(status);
    const lag = gauge(metrics, "event_router_subscription_lag_seconds", "subscription");
    const subs = list.subscriptions.slice().sort((a, b) => a.spec.name.localeCompare(b.spec.name));
    const head = h(
      "tr",
      {},
      ["Name", "Topics", "Pending", "In flight", "Retrying", "Lag", "Dead letters", "Consumers", "Delivered", "Acked", ""].map((t) => h("th", {}, t)),
    );
    const rows = [];
    for (const s of subs) {
      const name = s.spec.name;
      const seconds = lag.get(name);
      const toggle = h("button", { type: "button", class: "link", onclick: () => { open.has(name) ? open.delete(name) : open.add(name); tick(); } }, open.has(name) ? "hide spec" : "spec");
      rows.push(
        h(
          "tr",
          { dataset: { subscription: name } },
          h("td", {}, h("strong", {}, name)),
          h("td", { class: "topics" }, h("code", {}, (s.spec.selector?.topics || []).join(", "))),
          h("td", { class: "n pending" }, num(s.pending)),
          h("td", { class: "n" }, num(s.in_flight)),
          h("td", { class: "n" }, num(s.retrying)),
          h("td", { class: "n" }, seconds === undefined ? "—" : `${seconds.toFixed(1)} s`),
          h("td", { class: "n dead-letters" }, h("a", { href: `/ui/dead-letters/${encodeURIComponent(name)}` }, num(s.dead_letters))),
          h("td", { class: "n" }, num(s.consumers)),
          h("td", { class: "n" }, num(s.delivered)),
          h("td", { class: "n" }, num(s.acked)),
          h("td", {}, toggle),
        ),
      );
      if (open.has(name)) rows.push(h("tr", { class: "spec" }, h("td", { colspan: 11 }, json(s.spec))));
    }
    if (!subs.length) rows.push(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No durable subscriptions.")));
    replace(table, h("thead", {}, head), h("tbody", {}, rows));
    const b = stats.broker;
    replace(
      live,
      h("dt", {}, "Live subscriptions"),
      h("dd", { id: "live-count" }, num(b.live_subscriptions)),
      h("dt", {}, "WebSocket connections"),
      h("dd", {}, num(stats.connections.websocket)),
      h("dt", {}, "SSE streams"),
      h("dd", {}, num(stats.connections.sse)),
    );
    replace(
      subscribers,
      h("thead", {}, h("tr", {}, ["Transport", "Topics", "Filter", "Group", "Principal", "Since", "Id"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        listed.subscribers.map((s) =>
          h(
            "tr",
            { dataset: { transport: s.transport, id: s.subscription_id } },
            h("td", {}, s.transport === "sse" ? "SSE" : "WebSocket"),
            h("td", { class: "topics" }, h("code", {}, s.topics.join(", "))),
            h("td", {}, s.filter === undefined ? "" : h("code", {}, JSON.stringify(s.filter))),
            h("td", {}, s.group || h("span", { class: "muted" }, "live")),
            h("td", {}, s.principal),
            h("td", {}, s.since.replace("T", " ").replace(/\.\d+/, "")),
            h("td", { class: "muted" }, s.subscription_id),
          ),
        ),
        listed.subscribers.length ? null : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No WebSocket or SSE subscriptions on this replica.")),
        listed.total > listed.subscribers.length ? h("tr", {}, h("td", { colspan: 7, class: "muted" }, `… and ${num(listed.total - listed.subscribers.length)} more`)) : null,
      ),
    );
  }

  tick();
  const timer = setInterval(tick, INTERVAL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
