// Time-series charts with uPlot (vendored in console/vendor, loaded as the global `uPlot`).
import { h } from "./app.js";
import { t } from "./i18n.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];

/** The ranges the overview offers: span and bucket width. */
export const RANGES = {
  hour: { span: 3600e3, bucket: "minute", bucketMs: 60e3, label: "last_hour" },
  day: { span: 86400e3, bucket: "hour", bucketMs: 3600e3, label: "last_day" },
  week: { span: 7 * 86400e3, bucket: "hour", bucketMs: 3600e3, label: "last_week" },
};

/** Every bucket from `from` to `to`, with the API's points where there are any. Counts are 0
 *  in empty buckets; latencies are gaps (null). */
export function fill(points, from, to, bucketMs) {
  const byT = new Map(points.map((p) => [p.t, p]));
  const start = Math.floor(from / bucketMs) * bucketMs;
  const rows = [];
  for (let at = start; at <= to; at += bucketMs) {
    rows.push(byT.get(at) || { t: at, empty: true });
  }
  const col = (field, gap) => rows.map((r) => (r.empty ? (gap ? null : 0) : r[field] ?? (gap ? null : 0)));
  return { times: rows.map((r) => r.t / 1000), col };
}

/** Whether a series has lone values between gaps, which a line alone would not show. */
function values_sparse(values) {
  return values.some((v, i) => v != null && values[i - 1] == null && values[i + 1] == null);
}

/** A chart in a card: `series` are [label, values]. */
export function timeChart(title, times, series, id) {
  const card = h("div", { class: "card chart", id });
  card.append(h("h3", {}, title));
  const holder = h("div", { class: "plot" });
  card.append(holder);
  const opts = {
    width: 520,
    height: 220,
    series: [{}, ...series.map(([label], i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
      // Markers only where there are few buckets; a lone latency figure shows as a dot.
      points: { show: times.length <= 31 || series.length > 0 && values_sparse(series[i][1]) },
      fill: i === 0 ? COLORS[0] + "22" : undefined,
    }))],
    axes: [{}, { size: 56 }],
    scales: { x: { time: true } },
    legend: { live: true },
  };
  const plot = new uPlot(opts, [times, ...series.map(([, values]) => values)], holder);
  // Sized to its card once the card is on the page, and whenever it changes size.
  new ResizeObserver(() => {
    const width = holder.clientWidth;
    if (width > 0) plot.setSize({ width, height: 220 });
  }).observe(holder);
  return card;
}

export function emptyNote(points) {
  return points.length === 0 ? h("p", { class: "muted empty" }, t("no_data")) : null;
}
