// Charts of a performance log (uPlot, loaded as a global from vendor/uplot/).
// The x axis holds every instant of the window at the answer's step; an instant the
// answer lacks (a host that was unreachable) is null, which uPlot draws as a gap.
import type { MetricPoint, MetricSeries } from "./api.js";
import { h, replace } from "./dom.js";

type Field = Exclude<keyof MetricPoint, "t">;

interface ChartSpec {
  key: string;
  title: string;
  fields: { field: Field; label: string; color: string }[];
  /** A value in full (the legend, the summary). */
  unit: (v: number) => string;
  /** A tick's label: exact for a tick of these increments. */
  tick: (v: number, incr: number) => string;
  /** The tick increments uPlot may choose from, ascending. */
  incrs: number[];
  /** The top of the y axis when there is nothing above zero to show. */
  empty: number;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
const bytes = (v: number): string => {
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1024 && i < UNITS.length - 1) { x /= 1024; i++; }
  const digits = i === 0 ? 0 : x < 10 ? 2 : x < 100 ? 1 : 0;
  return `${(Math.sign(v) * x).toFixed(digits)} ${UNITS[i]}`;
};
const rate = (v: number): string => `${bytes(v)}/s`;
// Byte ticks step by 1, 2 or 5 times a power of ten of one binary unit (200 MiB, 1 GiB,
// 5 GiB): uPlot's own steps are decimal, and a billion bytes reads "954 MiB".
const BYTE_INCRS = UNITS.flatMap((_u, k) => [1, 2, 5, 10, 20, 50, 100, 200, 500].map((m) => m * 1024 ** k));
/** A byte tick in the unit of its increment, so that every label is the tick's exact value. */
const byteTick = (v: number, incr: number): string => {
  let k = 0;
  while (k < UNITS.length - 1 && incr >= 1024 ** (k + 1)) k++;
  return `${+(v / 1024 ** k).toFixed(2)} ${UNITS[k]}`;
};
// Percent ticks: 1/2/5 steps, with a decimal only when the step has one (no "1 %, 1 %").
const PERCENT_INCRS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
const percentTick = (v: number, incr: number): string => `${v.toFixed(incr < 1 ? 1 : 0)} %`;

// Colours chosen to stay apart for the common colour-vision deficiencies and to
// keep 3:1 against the white plot area.
const SPECS: ChartSpec[] = [
  { key: "cpu", title: "CPU", unit: (v) => `${v.toFixed(1)} %`, tick: percentTick, incrs: PERCENT_INCRS, empty: 100,
    fields: [{ field: "cpu_percent", label: "CPU %", color: "#0b5cad" }] },
  { key: "memory", title: "Memory", unit: bytes, tick: byteTick, incrs: BYTE_INCRS, empty: 4 * 1024 ** 3,
    fields: [{ field: "memory_used_bytes", label: "used", color: "#7a3e9d" }] },
  { key: "disk", title: "Disk", unit: rate, tick: (v, i) => `${byteTick(v, i)}/s`, incrs: BYTE_INCRS, empty: 4 * 1024 ** 2,
    fields: [{ field: "disk_read_bps", label: "read", color: "#0b7a4b" },
             { field: "disk_write_bps", label: "write", color: "#b35900" }] },
  { key: "net", title: "Network", unit: rate, tick: (v, i) => `${byteTick(v, i)}/s`, incrs: BYTE_INCRS, empty: 4 * 1024 ** 2,
    fields: [{ field: "net_rx_bps", label: "received", color: "#0b5cad" },
             { field: "net_tx_bps", label: "sent", color: "#b3261e" }] },
];

// One time zone for the whole page: UTC, as the simulator panel's clock and the API.
const iso = (t: number): string => new Date(t * 1000).toISOString();
/** An instant as the legend says it: 2027-01-15 08:00:00 UTC. */
export const utc = (t: number): string => `${iso(t).slice(0, 10)} ${iso(t).slice(11, 19)} UTC`;
/** A time tick: HH:MM, with the date under the first tick and under each midnight. */
const timeTick = (t: number, first: boolean): string =>
  first || iso(t).slice(11, 16) === "00:00" ? `${iso(t).slice(11, 16)}\n${iso(t).slice(5, 10)}` : iso(t).slice(11, 16);

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
  private legends: HTMLElement[] = [];
  private figures: HTMLElement[] = [];
  private observer: ResizeObserver;
  private width = 400;

  constructor() {
    this.root = h("div", { class: "charts" });
    SPECS.forEach((spec, i) => {
      const plot = h("div", { class: "plot" });
      const legend = h("p", { class: "chart-legend", "data-legend": spec.key }, "no data yet");
      const summary = h("p", { class: "chart-summary", "data-summary": spec.key }, "no data yet");
      const fig = h("figure", { class: "chart", "data-chart": spec.key, "aria-label": `${spec.title} chart` },
        h("figcaption", {}, spec.title), plot, legend, summary);
      this.root.append(fig);
      this.figures.push(fig);
      this.legends.push(legend);
      this.summaries.push(summary);
      const opts: uPlot.Options = {
        width: this.width,
        height: 160,
        // Our own legend (below): the instant under the pointer, else the latest sample,
        // never uPlot's "--" for an instant not pointed at.
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        tzDate: (t: number) => uPlot.tzDate(new Date(t * 1000), "Etc/UTC"),
        // From zero: a level is read against nothing, not against its own minimum.
        scales: { x: { time: true },
                  y: { range: (_u: uPlot, _min: number, max: number) => [0, max > 0 ? max * 1.1 : spec.empty] } },
        series: [{}, ...spec.fields.map((f) => ({ label: f.label, stroke: f.color, width: 2, spanGaps: false }))],
        axes: [
          { values: (_u: uPlot, ticks: number[]) => ticks.map((t, j) => timeTick(t, j === 0)) },
          { values: (_u: uPlot, ticks: number[], _axis: number, _space: number, incr: number) =>
              ticks.map((v) => spec.tick(v, incr)), incrs: spec.incrs, size: 84, space: 24 },
        ],
        hooks: { setCursor: [(u: uPlot) => this.legend(i, u.cursor.idx ?? null)] },
      };
      const empty: uPlot.AlignedData = [[], ...spec.fields.map(() => [])];
      this.plots.push(new uPlot(opts, empty, plot));
    });
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

  /** The legend of chart i at an instant's index (null: the latest one with a sample). */
  private legend(i: number, idx: number | null): void {
    const spec = SPECS[i];
    const data = this.plots[i]?.data;
    if (!data) return;
    const xs = data[0] as number[];
    const values = data.slice(1) as (number | null | undefined)[][];
    let at = idx;
    if (at === null) {
      for (let j = xs.length - 1; j >= 0 && at === null; j--) {
        if (values.some((col) => col[j] !== null && col[j] !== undefined)) at = j;
      }
    }
    if (at === null || xs[at] === undefined) {
      replace(this.legends[i], "no samples in this window");
      return;
    }
    const point = at;
    replace(this.legends[i], h("span", { class: "legend-time" }, utc(xs[point])),
      ...spec.fields.map((f, j) => {
        const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
        swatch.style.background = f.color;
        const v = values[j][point];
        return h("span", { class: "legend-item" }, swatch, `${f.label} `,
          h("strong", {}, v === null || v === undefined ? "–" : spec.unit(v)));
      }));
  }

  /** Show a series; `from` trims the start (a window shorter than what was fetched). */
  show(series: MetricSeries, from = series.start): void {
    const columns = align(series, from);
    let col = 1;
    SPECS.forEach((spec, i) => {
      const data = [columns[0], ...spec.fields.map((_f, j) => columns[col + j])] as uPlot.AlignedData;
      col += spec.fields.length;
      this.plots[i].setData(data);
      this.legend(i, this.plots[i].cursor.idx ?? null);
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
