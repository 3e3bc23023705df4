// Subscriptions: every durable subscription with its queues, consumers,
// lag and spec (GET /api/v1/subscriptions, the lag gauge of /metrics), and
// this replica's live subscribers and connections (GET /api/v1/stats).

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
  main.append(status, table, h("h2", {}, "Live and SSE subscribers (this replica)"), live);
  const open = new Set();
  let stopped = false;

  async function tick() {
    let list, stats, metrics;
    try {
      [list, stats, metrics] = await Promise.all([
        api("/api/v1/subscriptions"),
        api("/api/v1/stats"),
        text("/metrics").catch(() => ""),
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
          h("td", {}, h("code", {}, (s.spec.topics || []).join(", ") || s.spec.pattern || "")),
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
  }

  tick();
  const timer = setInterval(tick, INTERVAL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
