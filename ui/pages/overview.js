// Overview: broker, replicas, readiness, connections, and live charts of
// publish, delivery and error rates computed from successive
// GET /api/v1/stats readings.

import { api, ApiError } from "../api.js";
import { h, notice, num, replace } from "../dom.js";
import { liveChart } from "../chart.js";

const INTERVAL_MS = 2000;

export function render(main, { me }) {
  const facts = h("dl", { class: "facts", id: "facts" });
  const status = h("div", { id: "overview-status" });
  const charts = h("div", { class: "charts" });
  main.append(h("h1", {}, "Overview"), status, facts, charts);
  if (!me.admin) {
    status.append(notice("info", "Rates and counters need an admin token; readiness is shown below."));
  }
  const rates = me.admin
    ? liveChart(charts, {
        title: "Events per second",
        series: [{ label: "published", unit: "/s" }, { label: "delivered", unit: "/s" }],
      })
    : null;
  const errors = me.admin
    ? liveChart(charts, { title: "Delivery error rate", series: [{ label: "errors", unit: " %" }], yRange: [0, 100] })
    : null;
  let last = null;
  let stopped = false;

  async function tick() {
    const [ready, stats] = await Promise.all([
      fetch("/ready", { cache: "no-store" }).then((r) => r.ok).catch(() => false),
      me.admin ? api("/api/v1/stats").catch((e) => e) : Promise.resolve(null),
    ]);
    if (stopped) return;
    const rows = [["Readiness", h("span", { id: "readiness", class: ready ? "good" : "bad" }, ready ? "ready" : "not ready")]];
    if (stats instanceof ApiError || stats instanceof Error) {
      replace(status, notice("error", `Stats: ${stats.message}`));
    } else if (stats) {
      replace(status);
      const b = stats.broker;
      rows.unshift(["Broker", h("span", { id: "broker-kind" }, b.kind)]);
      if (b.node) rows.push(["This replica", b.node]);
      if (b.replicas) rows.push(["Replicas", h("span", { id: "replicas" }, `${b.replicas.length}: ${b.replicas.join(", ")}`)]);
      rows.push(
        ["Connections", `${num(stats.connections.websocket)} WebSocket, ${num(stats.connections.sse)} SSE`],
        ["Published", h("span", { id: "published" }, num(stats.events_published))],
        ["Delivered", num(stats.events_delivered)],
        ["Subscriptions", `${num(b.subscriptions)} durable, ${num(b.live_subscriptions)} live`],
        ["Queue depth", num(stats.queue_depth)],
        ["Error rate (since start)", `${(stats.error_rate * 100).toFixed(2)} %`],
      );
      sample(stats);
    }
    replace(facts, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function sample(stats) {
    const now = Date.now() / 1000;
    const attempted = stats.events_delivered + stats.broker.dropped;
    const failed = Math.round(stats.error_rate * attempted);
    const reading = { now, published: stats.events_published, delivered: stats.events_delivered, attempted, failed };
    if (last && now > last.now) {
      const dt = now - last.now;
      const dAttempted = reading.attempted - last.attempted;
      rates.push(now, [Math.max(0, (reading.published - last.published) / dt), Math.max(0, (reading.delivered - last.delivered) / dt)]);
      errors.push(now, [dAttempted > 0 ? (100 * Math.max(0, reading.failed - last.failed)) / dAttempted : 0]);
    }
    last = reading;
  }

  tick();
  const timer = setInterval(tick, INTERVAL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
    rates?.destroy();
    errors?.destroy();
  };
}
