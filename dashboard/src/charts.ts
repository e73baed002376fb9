// Charts of a performance log (uPlot, loaded as a global from vendor/uplot/).
// The x axis holds every instant of the window at the answer's step; an instant the
// answer lacks (a host that was unreachable) is null, which uPlot draws as a gap.
import type { MetricPoint, MetricSeries } from "./api.js";
import { h } from "./dom.js";

type Field = Exclude<keyof MetricPoint, "t">;

interface ChartSpec {
  key: string;
  title: string;
  fields: { field: Field; label: string; color: string }[];
  unit: (v: number, compact?: boolean) => string;
}

const bytes = (v: number, compact = false): string => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  const digits = i === 0 ? 0 : x < 10 ? (compact ? 1 : 2) : x < 100 && !compact ? 1 : 0;
  return `${(Math.sign(v) * x).toFixed(digits)} ${units[i]}`;
};
const rate = (v: number, compact = false): string => `${bytes(v, compact)}/s`;

// Colours chosen to stay apart for the common colour-vision deficiencies and to
// keep 3:1 against the white plot area.
const SPECS: ChartSpec[] = [
  { key: "cpu", title: "CPU", unit: (v) => `${v.toFixed(0)} %`,
    fields: [{ field: "cpu_percent", label: "CPU %", color: "#0b5cad" }] },
  { key: "memory", title: "Memory", unit: bytes,
    fields: [{ field: "memory_used_bytes", label: "used", color: "#7a3e9d" }] },
  { key: "disk", title: "Disk", unit: rate,
    fields: [{ field: "disk_read_bps", label: "read", color: "#0b7a4b" },
             { field: "disk_write_bps", label: "write", color: "#b35900" }] },
  { key: "net", title: "Network", unit: rate,
    fields: [{ field: "net_rx_bps", label: "received", color: "#0b5cad" },
             { field: "net_tx_bps", label: "sent", color: "#b3261e" }] },
];

/** Every instant of the window at the step, with null where the answer has no point. */
export function align(series: MetricSeries, from = series.start): (number | null)[][] {
  const step = series.step;
  const first = from + (((-from) % step) + step) % step;
  const byT = new Map(series.points.map((p) => [p.t, p]));
  const xs: number[] = [];
  for (let t = first; t <= series.end; t += step) xs.push(t);
  const columns: (number | null)[][] = [xs];
  for (const spec of SPECS) {
    for (const f of spec.fields) columns.push(xs.map((t) => byT.get(t)?.[f.field] ?? null));
  }
  return columns;
}

export class Charts {
  readonly root: HTMLElement;
  private plots: uPlot[] = [];
  private summaries: HTMLElement[] = [];
  private figures: HTMLElement[] = [];
  private observer: ResizeObserver;
  private width = 400;

  constructor() {
    this.root = h("div", { class: "charts" });
    for (const spec of SPECS) {
      const plot = h("div", { class: "plot" });
      const summary = h("p", { class: "chart-summary", "data-summary": spec.key }, "no data yet");
      const fig = h("figure", { class: "chart", "data-chart": spec.key, "aria-label": `${spec.title} chart` },
        h("figcaption", {}, spec.title), plot, summary);
      this.root.append(fig);
      this.figures.push(fig);
      this.summaries.push(summary);
      const opts: uPlot.Options = {
        width: this.width,
        height: 160,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        // From zero: a level is read against nothing, not against its own minimum.
        scales: { x: { time: true }, y: { range: (_u: uPlot, _min: number, max: number) => [0, max > 0 ? max * 1.1 : 1] } },
        series: [{}, ...spec.fields.map((f) => ({
          label: f.label, stroke: f.color, width: 2, spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : spec.unit(v)),
        }))],
        axes: [{}, { values: (_u: uPlot, vals: number[]) => vals.map((v) => spec.unit(v, true)), size: 84 }],
      };
      const empty: uPlot.AlignedData = [[], ...spec.fields.map(() => [])];
      this.plots.push(new uPlot(opts, empty, plot));
    }
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.root);
  }

  private resize(): void {
    const fig = this.root.querySelector(".plot");
    const w = Math.max(240, Math.floor(fig?.clientWidth ?? this.width));
    if (w === this.width) return;
    this.width = w;
    for (const p of this.plots) p.setSize({ width: w, height: 160 });
  }

  /** Show a series; `from` trims the start (a window shorter than what was fetched). */
  show(series: MetricSeries, from = series.start): void {
    const columns = align(series, from);
    let col = 1;
    SPECS.forEach((spec, i) => {
      const data = [columns[0], ...spec.fields.map((_f, j) => columns[col + j])] as uPlot.AlignedData;
      col += spec.fields.length;
      this.plots[i].setData(data);
      const present = (data[1] as (number | null)[]).filter((v) => v !== null).length;
      const gaps = (data[0] as number[]).length - present;
      const last = [...(data[1] as (number | null)[])].reverse().find((v) => v !== null);
      // For tests and tools: how many instants have a value, how many are gaps.
      this.figures[i].dataset.points = String(present);
      this.figures[i].dataset.gaps = String(gaps);
      this.summaries[i].textContent = present === 0
        ? "no samples in this window"
        : `${present} samples every ${series.step} s${gaps ? `, ${gaps} missing (drawn as gaps)` : ""}; ` +
          `latest ${spec.fields[0].label}: ${last === undefined || last === null ? "–" : spec.unit(last)}`;
    });
  }

  destroy(): void {
    this.observer.disconnect();
    for (const p of this.plots) p.destroy();
    this.root.remove();
  }
}
