// Live time-series charts drawn by uPlot (ui/vendor/, see ui/vendor.sh).

import { h } from "./dom.js";

const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea"];

/**
 * A chart of the last `windowSeconds` of readings, in `parent`.
 * series: [{label, unit}]. Returns {push(timeSeconds, values), destroy()}.
 */
export function liveChart(parent, { title, series, windowSeconds = 300, yRange }) {
  const now = h("span", { class: "now" });
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title, " ", now));
  parent.appendChild(box);
  const data = [[], ...series.map(() => [])];
  const opts = {
    width: Math.max(280, box.clientWidth || 480),
    height: 200,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    // The x axis always spans the whole window, ending at the last reading.
    scales: {
      x: { time: true, range: (_, min, max) => [max - windowSeconds, max] },
      y: yRange ? { range: yRange } : { auto: true },
    },
    axes: [{}, { size: 60 }],
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        value: (_, v) => (v === null || v === undefined ? "—" : `${v.toFixed(2)}${s.unit || ""}`),
      })),
    ],
  };
  const plot = new window.uPlot(opts, data, box);
  const resize = new ResizeObserver(() => {
    const width = Math.max(280, box.clientWidth);
    if (width !== plot.width) plot.setSize({ width, height: 200 });
  });
  resize.observe(box);
  return {
    push(t, values) {
      data[0].push(t);
      values.forEach((v, i) => data[i + 1].push(v));
      while (data[0].length && data[0][0] < t - windowSeconds) {
        for (const column of data) column.shift();
      }
      plot.setData(data);
      now.replaceChildren(
        ...series.map((s, i) =>
          h("span", { class: "reading", dataset: { series: s.label, value: String(values[i]) } }, `${s.label} ${values[i].toFixed(2)}${s.unit || ""}`),
        ),
      );
    },
    destroy() {
      resize.disconnect();
      plot.destroy();
    },
  };
}
