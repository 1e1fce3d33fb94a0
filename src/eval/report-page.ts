// The run report page's own style and script, inlined into every report beside uPlot's bundle, so
// the page works from a file:// URL with nothing fetched. The script reads the chart data from the
// page's JSON block and draws one uPlot chart per block; it never turns data into HTML (labels go
// through uPlot, which sets them as text).

/** Colours of the runs, in order: distinct from each other and readable on light and dark backgrounds. */
export const RUN_COLORS = [
  "#2f7ed8",
  "#e4572e",
  "#17a673",
  "#9b59b6",
  "#d4a000",
  "#00a5b5",
  "#d63384",
  "#7d8a96",
] as const;

export const PAGE_CSS = `
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1b1f24; --muted: #5b6570; --card: #f6f8fa; --border: #d5dbe1;
  --grid: rgba(0, 0, 0, 0.08); --accent: #2f7ed8; --differs: rgba(228, 87, 46, 0.12);
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #111418; --fg: #e3e7eb; --muted: #9aa4ae; --card: #1a1f25; --border: #2e363f;
    --grid: rgba(255, 255, 255, 0.09); --accent: #6aa7ee; --differs: rgba(228, 87, 46, 0.22);
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; padding: 16px; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
main { max-width: 1280px; margin: 0 auto; }
h1 { font-size: 20px; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 16px; margin: 28px 0 10px; }
h3 { font-size: 14px; margin: 0 0 6px; font-weight: 600; }
.sub { color: var(--muted); margin: 0 0 12px; }
.live { display: inline-block; padding: 1px 8px; border-radius: 10px; background: var(--accent); color: #fff; font-size: 12px; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--border); vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td { overflow-wrap: anywhere; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
tr.differs td { background: var(--differs); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: baseline; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 460px), 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--border); border-radius: 8px; padding: 10px; min-width: 0; }
.chart { width: 100%; min-height: 120px; }
.empty { color: var(--muted); padding: 30px 0; text-align: center; }
.notes { color: var(--muted); font-size: 13px; padding-left: 18px; }
.samples { list-style: none; margin: 0; padding: 0; }
.samples li { border-top: 1px solid var(--border); padding: 8px 0; }
.samples .step { color: var(--muted); font-size: 12px; }
pre.text {
  margin: 4px 0 0; padding: 6px 8px; background: var(--card); border: 1px solid var(--border); border-radius: 6px;
  white-space: pre-wrap; overflow-wrap: anywhere; unicode-bidi: isolate; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
pre.prompt { color: var(--muted); }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
.uplot { color: var(--fg); }
.chart .uplot { max-width: 100%; }
.u-legend { font-size: 12px; max-width: 100%; }
.u-legend th { white-space: normal; overflow-wrap: anywhere; font-weight: 500; }
.u-legend .u-marker { border-radius: 2px; }
@media (max-width: 600px) { body { padding: 10px; } th, td { padding: 3px 6px; } }
${RUN_COLORS.map((c, i) => `.swatch.run-${i} { background: ${c}; }`).join("\n")}
`;

/**
 * The page's script. Chart containers carry `data-points` (points per series, once drawn) and
 * `data-drawn`, which the browser test reads; `window.reportCharts` holds the uPlot instances.
 */
export const PAGE_SCRIPT = `
(function () {
  "use strict";
  var source = document.getElementById("report-data");
  if (!source || typeof uPlot !== "function") return;
  var data = JSON.parse(source.textContent);
  var style = getComputedStyle(document.documentElement);
  var muted = style.getPropertyValue("--muted").trim() || "#5b6570";
  var grid = style.getPropertyValue("--grid").trim() || "rgba(0,0,0,0.08)";

  function compact(v) {
    if (v == null || !isFinite(v)) return "-";
    var a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toPrecision(3) + "G";
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
    if (a === 0) return "0";
    if (a < 1e-3) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }
  function axis(label) {
    return {
      label: label, stroke: muted, labelSize: 18, size: 52,
      grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 },
      values: function (u, splits) { return splits.map(compact); }
    };
  }
  function heightFor(width) { return Math.round(Math.max(180, Math.min(300, width * 0.55))); }

  var charts = [];
  data.charts.forEach(function (c) {
    var el = document.getElementById(c.id);
    if (!el) return;
    var series = [{ label: c.xLabel, value: function (u, v) { return compact(v); } }];
    var columns = [c.x];
    var counts = [];
    c.series.forEach(function (s) {
      series.push({
        label: s.label, stroke: s.faint ? s.color + "8c" : s.color, width: s.faint ? 1 : 2, spanGaps: true,
        dash: s.dashed ? [6, 4] : undefined,
        points: { show: s.points, size: 6, stroke: s.color, fill: s.color },
        value: function (u, v) { return compact(v); }
      });
      columns.push(s.y);
      counts.push(s.y.filter(function (v) { return v != null; }).length);
    });
    var width = el.clientWidth || 600;
    var u = new uPlot({
      width: width, height: heightFor(width),
      scales: { x: { time: false } },
      axes: [axis(c.xLabel), axis(c.yLabel)],
      series: series,
      cursor: { points: { size: 6 } },
      hooks: {
        draw: [function () {
          el.setAttribute("data-points", counts.join(","));
          el.setAttribute("data-drawn", "true");
        }]
      }
    }, columns, el);
    charts.push({ u: u, el: el });
  });
  window.reportCharts = charts.map(function (c) { return c.u; });

  var pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      charts.forEach(function (c) {
        var width = c.el.clientWidth;
        if (width > 0) c.u.setSize({ width: width, height: heightFor(width) });
      });
    }, 100);
  });
})();
`;
