// The dashboard: log in, watch hosts and VMs, act on them, migrate, read the charts.
// State is kept here and changed only through `apply` (feed events, polls, answers to
// our own calls), then drawn by `render`; the simulator panel lives in sim.ts.
import { Api, type Host, type Migration, type Vm, type VmStatus } from "./api.js";
import { Charts } from "./charts.js";
import { announce, badge, clearErrors, h, Keyed, mib, regions, replace, showError } from "./dom.js";
import { ChangeFeed, type Change, type FeedMode } from "./feed.js";
import { SimPanel } from "./sim.js";

interface PageConfig {
  backend: string;
  simulator: boolean;
  demo_users: { username: string; password: string; role: string }[];
}

type ActionName = "start" | "stop" | "force-stop" | "restart" | "suspend" | "resume";

const ACTIONS: Record<VmStatus, ActionName[]> = {
  running: ["stop", "force-stop", "restart", "suspend"],
  blocked: ["stop", "force-stop", "restart", "suspend"],
  paused: ["resume", "force-stop"],
  shutdown: ["force-stop"],
  pmsuspended: ["resume", "force-stop"],
  shutoff: ["start"],
  crashed: ["start", "force-stop"],
  nostate: ["start"],
};
const LABELS: Record<ActionName, string> = {
  start: "Start", stop: "Shut down", "force-stop": "Force off", restart: "Restart",
  suspend: "Pause", resume: "Resume",
};
// What a VM's button says while its call is out (one call per VM at a time).
type Pending = ActionName | "migrate" | "cancel";
const PENDING: Record<Pending, string> = {
  start: "Starting…", stop: "Shutting down…", "force-stop": "Forcing off…", restart: "Restarting…",
  suspend: "Pausing…", resume: "Resuming…", migrate: "Migrating…", cancel: "Cancelling…",
};
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const WINDOWS = [[900, "15 minutes"], [3600, "1 hour"], [6 * 3600, "6 hours"], [86400, "24 hours"]] as const;
const STEPS = [[0, "auto"], [10, "10 s"], [60, "1 min"], [300, "5 min"], [900, "15 min"]] as const;

class Dashboard {
  private readonly api: Api;
  private readonly feed: ChangeFeed;
  private hosts = new Map<string, Host>();
  private vms = new Map<string, Vm>();
  private migrations = new Map<string, Migration>();
  private selected: string = "all";
  private chartTarget: { kind: "vms" | "hosts"; id: string } | null = null;
  private chartWindow = 3600;
  private chartStep = 0;
  private charts: Charts | null = null;
  private chartTimer: number | undefined;
  private renderQueued = false;
  private truncated = false;
  private hostFilter = "";
  private drawnHosts = "";
  // Rows and job items are kept and updated in place (dom.ts Keyed), never redrawn whole.
  private vmTable: { withHost: boolean; table: HTMLTableElement; note: HTMLElement; rows: Keyed<Vm> } | null = null;
  private jobItems: Keyed<Migration> | null = null;
  // VM id → the call made on it and not yet answered: its buttons wait, and say so.
  private pending = new Map<string, Pending>();
  // VM id → its newest migration job (a failed one is shown on the VM's row).
  private latestJob = new Map<string, Migration>();
  // Names of every VM seen, for jobs whose VM is not in the current view.
  private names = new Map<string, string>();
  private sim: SimPanel | null = null;
  private readonly app: HTMLElement;

  constructor(private readonly config: PageConfig, prefix: string, private readonly sandbox: boolean) {
    this.api = new Api(prefix);
    this.api.onLoggedOut = (reason) => this.showLogin(reason);
    this.feed = new ChangeFeed(this.api, {
      apply: (c) => this.apply(c),
      relist: () => this.relist(),
      poll: () => this.poll(),
      mode: (m, d) => this.feedMode(m, d),
    });
    this.app = document.getElementById("app") as HTMLElement;
    regions(document.getElementById("errors") as HTMLElement,
            document.getElementById("announce") as HTMLElement);
  }

  async boot(): Promise<void> {
    if (await this.api.resume()) await this.enter();
    else this.showLogin();
  }

  // --- login ---
  private showLogin(reason = ""): void {
    this.feed.stop();
    this.stopCharts();
    this.sim?.stop();
    this.sim = null;
    this.setUser();
    const demo = this.config.simulator ? this.config.demo_users : [];
    const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true,
                              value: demo[0]?.username ?? "" });
    const pass = h("input", { id: "password", name: "password", type: "password", required: true,
                              autocomplete: "current-password", value: demo[0]?.password ?? "" });
    const submit = h("button", { type: "submit", class: "primary" }, "Log in");
    const form = h("form", { class: "login card", "aria-labelledby": "login-h" },
      h("h2", { id: "login-h" }, "Log in"),
      reason ? h("p", { class: "note" }, reason) : null,
      h("label", { for: "username" }, "Username"), user,
      h("label", { for: "password" }, "Password"), pass,
      submit,
      demo.length ? h("div", { class: "demo" },
        h("p", {}, "Simulator demo users (click to fill in):"),
        h("ul", {}, ...demo.map((u) => h("li", {}, h("button", {
          type: "button", class: "link", "data-demo": u.username,
          onclick: () => { user.value = u.username; pass.value = u.password; submit.focus(); },
        }, `${u.username} / ${u.password}`), ` — ${u.role}`)))) : null);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      this.api.login(user.value, pass.value)
        .then(() => { clearErrors(); return this.enter(); })
        .catch((err) => showError(err, "Log in"))
        .finally(() => { submit.disabled = false; });
    });
    replace(this.app, form);
    user.focus();
  }

  private setUser(): void {
    const who = this.api.identity;
    const box = document.getElementById("user") as HTMLElement;
    replace(box, who ? h("span", {}, `${who.username} `, badge(who.role === "admin" ? "admin" : "viewer", who.role)) : null,
      who ? h("button", { type: "button", id: "logout", onclick: () => { this.api.logout().then(() => this.showLogin()); } },
        "Log out") : null);
  }

  private get admin(): boolean {
    return this.api.identity?.role === "admin";
  }

  private async enter(): Promise<void> {
    this.setUser();
    const main = h("div", { class: "layout" },
      h("section", { class: "card hosts", "aria-labelledby": "hosts-h" },
        h("h2", { id: "hosts-h" }, "Hosts"), h("div", { id: "host-list" })),
      h("section", { class: "card vms", "aria-labelledby": "vms-h" },
        h("h2", { id: "vms-h" }, "Virtual machines"), h("div", { id: "vm-list" })),
      h("section", { class: "card migrations", "aria-labelledby": "mig-h" },
        h("h2", { id: "mig-h" }, "Migrations"), h("div", { id: "mig-list" })),
      h("section", { class: "card perf", id: "perf", "aria-labelledby": "perf-h" },
        h("h2", { id: "perf-h" }, "Performance"), h("div", { id: "perf-body" },
          h("p", { class: "note" }, "Choose “Charts” on a host or a VM."))),
      this.config.simulator && this.admin
        ? h("section", { class: "card sim", id: "sim", "aria-labelledby": "sim-h" },
          h("h2", { id: "sim-h" }, "Simulator"), h("div", { id: "sim-body" }))
        : null);
    replace(this.app, main);
    this.sim?.stop();
    if (this.config.simulator && this.admin) {
      this.sim = new SimPanel(this.api, document.getElementById("sim-body") as HTMLElement,
        (replaced) => this.relist(replaced), (host) => this.apply({ type: "host", data: host }),
        () => [...this.hosts.values()], () => [...this.vms.values()], this.sandbox);
    } else {
      this.sim = null;
    }
    try {
      await this.relist();
    } catch (err) {
      showError(err, "Loading the cluster");
    }
    await this.feed.start();
  }

  // --- state ---
  private apply(change: Change): void {
    switch (change.type) {
      case "host":
        this.hosts.set(change.data.id, change.data);
        break;
      case "vm":
        if (this.inView(change.data)) this.vms.set(change.data.id, change.data);
        else this.vms.delete(change.data.id);
        break;
      case "vm_removed":
        this.vms.delete(change.data.id);
        break;
      case "migration":
        this.migrations.set(change.data.id, change.data);
        break;
      case "reset":
        this.relist().catch((err) => showError(err, "Reloading"));
        return;
    }
    this.queueRender();
  }

  private inView(vm: Vm): boolean {
    return this.selected === "all" || vm.host_id === this.selected;
  }

  private async listHosts(): Promise<Map<string, Host>> {
    const hosts = new Map<string, Host>();
    let cursor: string | undefined;
    do {
      const page = await this.api.listHosts(cursor);
      for (const x of page.hosts) hosts.set(x.id, x);
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
    return hosts;
  }

  private async listVms(): Promise<Map<string, Vm>> {
    // One page: up to 1,000 VMs of a host, or the first 200 of the cluster (a large
    // cluster is read host by host: the page must stay light enough to poll).
    const page = await this.api.listVms(this.selected === "all" ? { limit: 200 } : { limit: 1000, host_id: this.selected });
    this.truncated = page.next_cursor !== null;
    return new Map(page.vms.map((v) => [v.id, v]));
  }

  /**
   * Everything again: at start, after a reset, after a scenario change. `replaced`: the
   * world was replaced from this page (a scenario, a reset), so nothing chosen in the old
   * one is kept: no host selected, no filter, no charts.
   */
  async relist(replaced = false): Promise<void> {
    if (replaced) {
      this.selected = "all";
      this.hostFilter = "";
      this.closeCharts();
    }
    const hosts = await this.listHosts();
    this.feed.position = this.api.feedPosition;
    // A selected host that is gone (another client replaced the world) is dropped before
    // its VMs are asked for: asking would answer 404 and leave the old world on screen.
    if (this.selected !== "all" && !hosts.has(this.selected)) this.selected = "all";
    if (this.chartTarget?.kind === "hosts" && !hosts.has(this.chartTarget.id)) this.closeCharts();
    const [vms, jobs] = await Promise.all([this.listVms(), this.api.listMigrations({ limit: 1000 })]);
    this.hosts = hosts;
    this.vms = vms;
    this.migrations = new Map(jobs.migrations.map((m) => [m.id, m]));
    this.render();
    await this.sim?.refresh();
  }

  /** Without the change feed: what is on screen, fetched again. */
  async poll(): Promise<void> {
    try {
      const hosts = await this.listHosts();
      const vms = await this.listVms();
      const active = [...this.migrations.values()].filter((m) => !FINISHED.has(m.status));
      const running = await this.api.listMigrations({ limit: 1000, status: "running" });
      const initiated = await this.api.listMigrations({ limit: 1000, status: "initiated" });
      const fresh = [...running.migrations, ...initiated.migrations];
      const seen = new Set(fresh.map((m) => m.id));
      // Jobs that stopped running since the last poll: fetch them for their outcome.
      const ended = await Promise.all(active.filter((m) => !seen.has(m.id))
        .map((m) => this.api.getMigration(m.id).catch(() => null)));
      this.hosts = hosts;
      this.vms = vms;
      for (const m of [...fresh, ...ended]) if (m) this.migrations.set(m.id, m);
      this.render();
    } catch (err) {
      this.feedMode("reconnecting", `polling failed: ${String(err)}`);
    }
  }

  private feedMode(mode: FeedMode, detail: string): void {
    const el = document.getElementById("feed") as HTMLElement;
    const text: Record<FeedMode, string> = {
      connecting: "connecting…", live: "live", polling: "polling", reconnecting: "reconnecting", stopped: "",
    };
    el.textContent = text[mode];
    el.className = `feed feed-${mode}`;
    el.title = detail;
    el.dataset.mode = mode;
  }

  // --- drawing ---
  private queueRender(): void {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => { this.renderQueued = false; this.render(); });
  }

  private render(): void {
    const list = document.getElementById("host-list");
    if (!list) return;
    for (const vm of this.vms.values()) this.names.set(vm.id, vm.name);
    this.latestJob.clear();
    for (const m of this.migrations.values()) {
      const seen = this.latestJob.get(m.vm_id);
      if (!seen || m.created_at > seen.created_at) this.latestJob.set(m.vm_id, m);
    }
    // Hosts change seldom (progress events leave them alone): redraw them only on a change.
    const hosts = JSON.stringify([this.selected, this.hostFilter, [...this.hosts.values()]]);
    if (hosts !== this.drawnHosts || !list.childElementCount) {
      this.drawnHosts = hosts;
      this.renderHosts(list);
      this.sim?.renderHosts();
    }
    this.renderVms(document.getElementById("vm-list") as HTMLElement);
    this.renderMigrations(document.getElementById("mig-list") as HTMLElement);
  }

  private hostName(id: string): string {
    return this.hosts.get(id)?.hostname.split(".")[0] ?? id.slice(0, 8);
  }

  private renderHosts(region: HTMLElement): void {
    const all = [...this.hosts.values()].sort((a, b) => a.hostname.localeCompare(b.hostname));
    const total = all.reduce((n, x) => n + x.vm_count, 0);
    const needle = this.hostFilter.toLowerCase();
    // A large cluster: a filter box, and at most 100 hosts drawn at once.
    const matching = needle ? all.filter((x) => x.hostname.toLowerCase().includes(needle) || x.status === needle) : all;
    const hosts = matching.slice(0, 100);
    let filter = region.parentElement?.querySelector<HTMLElement>(".host-filter");
    if (all.length <= 12 && filter) filter.remove();
    if (all.length > 12 && !filter) {
      const input = h("input", { id: "host-filter", type: "search", placeholder: "name or status" });
      input.addEventListener("input", () => { this.hostFilter = input.value; this.render(); });
      filter = h("div", { class: "host-filter" }, h("label", { for: "host-filter" }, "Filter hosts"), input);
      region.before(filter);
    }
    const pick = (id: string) => () => { this.select(id); };
    replace(region, h("ul", { class: "host-items" },
      h("li", {}, h("button", { type: "button", class: "host-pick", "data-key": "host-all",
                                "aria-pressed": this.selected === "all" ? "true" : "false", onclick: pick("all") },
        h("span", { class: "host-name" }, "All hosts"), h("span", { class: "muted" }, `${total.toLocaleString("en")} VMs`))),
      ...hosts.map((x) => h("li", { "data-host": x.id, "data-status": x.status },
        h("button", { type: "button", class: "host-pick", "data-key": `host-${x.id}`,
                      "aria-pressed": this.selected === x.id ? "true" : "false", onclick: pick(x.id) },
          h("span", { class: "host-name", title: x.hostname }, this.hostName(x.id)),
          h("span", { class: "host-line" }, badge(x.status), ` ${x.vm_count} VMs`),
          h("span", { class: "muted host-meta" }, `${x.cpus} CPUs · ${mib(x.memory_mib)}`)),
        h("button", { type: "button", class: "small", "data-key": `hchart-${x.id}`,
                      "aria-label": `Charts of ${x.hostname}`, onclick: () => this.showCharts("hosts", x.id) },
          "Charts"))),
      matching.length > hosts.length
        ? h("li", { class: "note" }, `…and ${matching.length - hosts.length} more: filter to find one.`) : null));
  }

  private select(id: string): void {
    this.selected = id;
    this.listVms().then((vms) => { this.vms = vms; this.render(); }).catch((err) => showError(err, "Listing VMs"));
    this.render();
  }

  private renderVms(region: HTMLElement): void {
    const title = document.getElementById("vms-h") as HTMLElement;
    title.textContent = this.selected === "all" ? "Virtual machines" : `Virtual machines on ${this.hostName(this.selected)}`;
    const vms = [...this.vms.values()].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    if (!vms.length) {
      this.vmTable = null;
      replace(region, h("p", { class: "note" }, "No VMs here."));
      return;
    }
    const withHost = this.selected === "all";
    let view = this.vmTable;
    if (!view || view.withHost !== withHost || !region.contains(view.table)) {
      const body = h("tbody");
      const table = h("table", { class: "vm-table" }, h("caption", { class: "sr-only" }),
        h("thead", {}, h("tr", {}, ...["Name", "Status", withHost ? "Host" : null, "Size", "Actions"]
          .map((c) => c && h("th", { scope: "col" }, c)))), body);
      view = this.vmTable = { withHost, table, note: h("p", { class: "note", id: "vm-truncated" }),
        rows: new Keyed<Vm>(body, (vm) => vm.id, (vm) => this.vmSignature(vm), (vm) => this.vmRow(vm)) };
      replace(region, view.note, table);
    }
    (view.table.caption as HTMLElement).textContent = title.textContent;
    const total = withHost ? [...this.hosts.values()].reduce((n, x) => n + x.vm_count, 0)
      : this.hosts.get(this.selected)?.vm_count ?? vms.length;
    view.note.hidden = !this.truncated;
    view.note.textContent = this.truncated
      ? `Showing the first ${vms.length} of ${total.toLocaleString("en")} VMs: choose a host to see all of its VMs.` : "";
    view.rows.update(vms);
    for (const vm of vms) {
      const row = vm.migration_id ? view.rows.get(vm.id) : undefined;
      if (row && vm.migration_id) setProgress(row, this.migrations.get(vm.migration_id));
    }
  }

  /** Everything a VM's row shows but its migration's progress (updated in place). */
  private vmSignature(vm: Vm): string {
    const host = this.hosts.get(vm.host_id);
    const failed = this.failedMigration(vm);
    // Field by field: the same VM from an answer and from the feed may list its keys in
    // another order, and must not rebuild its row.
    return JSON.stringify([vm.id, vm.name, vm.status, vm.host_id, vm.vcpus, vm.memory_mib, vm.migration_id,
                           this.admin, this.selected === "all", this.hostName(vm.host_id), host?.status,
                           this.pending.get(vm.id) ?? null, failed?.id, failed?.error,
                           failed && this.hostName(failed.destination_host_id)]);
  }

  /** The VM's newest job, when it failed and nothing has been tried since. */
  private failedMigration(vm: Vm): Migration | undefined {
    const job = this.latestJob.get(vm.id);
    return !vm.migration_id && job?.status === "failed" ? job : undefined;
  }

  /** Why nothing can be done to this VM now, or null. */
  private blocked(vm: Vm): string | null {
    const host = this.hosts.get(vm.host_id);
    return host && host.status !== "connected"
      ? `${this.hostName(vm.host_id)} is ${host.status}: actions wait until it is back` : null;
  }

  /** A VM's button: waits (aria-disabled) while a call on the VM is out or its host is away. */
  private vmButton(vm: Vm, what: Pending, key: string, text: string, label: string, run: () => void,
                   danger = false, blocked = this.blocked(vm)): HTMLElement {
    const pending = this.pending.get(vm.id);
    const busy = pending === what;
    // aria-disabled, not disabled: the button keeps keyboard focus and its reason is read.
    const off = pending !== undefined || blocked !== null;
    return h("button", { type: "button", class: danger ? "small danger" : "small", "data-key": key, "data-action": what,
                         "aria-label": busy ? `${PENDING[what]} ${vm.name}` : label,
                         "aria-disabled": off ? "true" : null, "aria-busy": busy ? "true" : null,
                         "aria-describedby": blocked ? `why-${vm.id}` : null,
                         onclick: () => { if (!off) run(); } }, busy ? PENDING[what] : text);
  }

  private vmRow(vm: Vm): HTMLElement {
    const job = vm.migration_id ? this.migrations.get(vm.migration_id) : undefined;
    const blocked = this.admin ? this.blocked(vm) : null;
    const failed = this.failedMigration(vm);
    const cells: Node[] = [];
    if (blocked) cells.push(h("span", { class: "row-note", id: `why-${vm.id}` }, blocked));
    if (vm.migration_id) {
      cells.push(this.progress(job, vm.name));
      if (this.admin) cells.push(this.cancelButton(vm.migration_id, vm));
    } else if (this.admin) {
      for (const a of ACTIONS[vm.status] ?? []) {
        cells.push(this.vmButton(vm, a, `act-${vm.id}-${a}`, LABELS[a], `${LABELS[a]} ${vm.name}`,
                                 () => this.act(vm, a), a === "force-stop"));
      }
      if (vm.status === "running" || vm.status === "blocked" || vm.status === "paused") {
        cells.push(this.vmButton(vm, "migrate", `mig-${vm.id}`, "Migrate…", `Migrate ${vm.name}`,
                                 () => this.migrateDialog(vm)));
      }
    }
    cells.push(h("button", { type: "button", class: "small", "data-key": `chart-${vm.id}`, "data-action": "charts",
                             "aria-label": `Charts of ${vm.name}`, onclick: () => this.showCharts("vms", vm.id) }, "Charts"));
    return h("tr", { "data-vm": vm.id, "data-status": vm.status, "data-host": vm.host_id },
      h("th", { scope: "row", class: "vm-name" }, vm.name,
        failed ? h("span", { class: "row-problem", "data-job": failed.id },
          `Migration to ${this.hostName(failed.destination_host_id)} failed: ${failed.error ?? "no reason given"}`) : null),
      h("td", {}, badge(vm.status)),
      this.selected === "all" ? h("td", { class: "vm-host" }, this.hostName(vm.host_id)) : null,
      h("td", { class: "num" }, `${vm.vcpus} vCPU · ${mib(vm.memory_mib)}`),
      h("td", { class: "actions" }, ...cells));
  }

  private progress(job: Migration | undefined, name: string): HTMLElement {
    const el = h("span", { class: "mig-progress" },
      h("progress", { max: 100, value: 0, "aria-label": `Migration of ${name}` }), h("span", { class: "pct" }, "0 %"));
    setProgress(el, job);
    return el;
  }

  private cancelButton(id: string, vm: { id: string; name: string }): HTMLElement {
    const busy = this.pending.get(vm.id) === "cancel";
    const off = this.pending.has(vm.id);
    return h("button", { type: "button", class: "small danger", "data-key": `cancel-${id}`, "data-action": "cancel",
                         "aria-label": busy ? `Cancelling the migration of ${vm.name}` : `Cancel the migration of ${vm.name}`,
                         "aria-disabled": off ? "true" : null, "aria-busy": busy ? "true" : null,
                         onclick: () => { if (!off) this.cancel(id, vm.id); } }, busy ? PENDING.cancel : "Cancel");
  }

  private cancel(id: string, vmId: string): void {
    if (!this.begin(vmId, "cancel")) return;
    this.api.cancel(id).then((m) => this.apply({ type: "migration", data: m }))
      .then(() => this.feed.pollOnce())
      .catch((err) => showError(err, "Cancel"))
      .finally(() => this.end(vmId));
  }

  /** Mark a call on a VM as out (false: one already is, send nothing). Drawn at once. */
  private begin(vmId: string, what: Pending): boolean {
    if (this.pending.has(vmId)) return false;
    this.pending.set(vmId, what);
    this.render();
    return true;
  }

  private end(vmId: string): void {
    this.pending.delete(vmId);
    this.render();
  }

  private renderMigrations(region: HTMLElement): void {
    const jobs = [...this.migrations.values()].sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, 20);
    if (!jobs.length) {
      this.jobItems = null;
      replace(region, h("p", { class: "note" }, "No migrations yet."));
      return;
    }
    if (!this.jobItems || !region.contains(this.jobItems.container)) {
      const list = h("ul", { class: "mig-items" });
      this.jobItems = new Keyed<Migration>(list, (m) => m.id, (m) => this.jobSignature(m), (m) => this.jobItem(m));
      replace(region, list);
    }
    this.jobItems.update(jobs);
    for (const m of jobs) {
      const item = this.jobItems.get(m.id);
      if (item) setProgress(item, m);
    }
  }

  private jobName(m: Migration): string {
    return this.names.get(m.vm_id) ?? m.vm_id.slice(0, 8);
  }

  private jobSignature(m: Migration): string {
    return JSON.stringify([{ ...m, progress: null }, this.jobName(m), this.hostName(m.source_host_id),
                           this.hostName(m.destination_host_id), this.admin, this.pending.get(m.vm_id) ?? null]);
  }

  private jobItem(m: Migration): HTMLElement {
    const name = this.jobName(m);
    const done = FINISHED.has(m.status);
    return h("li", { "data-migration": m.id, "data-status": m.status },
      h("div", {}, h("strong", {}, name), ` ${this.hostName(m.source_host_id)} → ${this.hostName(m.destination_host_id)} `,
        badge(m.status)),
      this.progress(m, name),
      m.error ? h("p", { class: "mig-error" }, m.error) : null,
      !done && this.admin ? this.cancelButton(m.id, { id: m.vm_id, name }) : null);
  }

  // --- doing ---
  private act(vm: Vm, a: ActionName): void {
    if (this.blocked(vm) || !this.begin(vm.id, a)) return;
    const request = a === "force-stop" ? { action: "stop" as const, force: true } : { action: a };
    this.api.action(vm.id, request)
      .then((now) => { this.apply({ type: "vm", data: now }); announce(`${vm.name}: ${LABELS[a]} accepted, now ${now.status}`); })
      .catch((err) => showError(err, `${LABELS[a]} ${vm.name}`))
      .finally(() => this.end(vm.id));
  }

  private migrateDialog(vm: Vm): void {
    const targets = [...this.hosts.values()].filter((x) => x.id !== vm.host_id)
      .sort((a, b) => a.hostname.localeCompare(b.hostname));
    const dest = h("select", { id: "mig-dest", required: true },
      ...targets.map((x) => h("option", { value: x.id, disabled: x.status !== "connected" },
        `${x.hostname}${x.status !== "connected" ? " (disconnected)" : ""}`)));
    const firstOk = targets.find((x) => x.status === "connected");
    if (firstOk) dest.value = firstOk.id;
    const live = h("input", { id: "mig-live", type: "checkbox", checked: true });
    const storage = h("select", { id: "mig-storage" },
      h("option", { value: "none" }, "none (shared storage)"), h("option", { value: "all" }, "all disks"),
      h("option", { value: "inc" }, "incremental"));
    const dialog = h("dialog", { class: "card", "aria-labelledby": "mig-dialog-h" });
    const form = h("form", { method: "dialog" },
      h("h2", { id: "mig-dialog-h" }, `Migrate ${vm.name}`),
      h("p", { class: "muted" }, `from ${this.hostName(vm.host_id)}`),
      h("label", { for: "mig-dest" }, "Destination host"), dest,
      h("div", { class: "check" }, live, h("label", { for: "mig-live" }, "Live (keep the VM running)")),
      h("label", { for: "mig-storage" }, "Copy storage"), storage,
      h("div", { class: "buttons" },
        h("button", { type: "submit", class: "primary", value: "go", id: "mig-go" }, "Migrate"),
        h("button", { type: "submit", value: "cancel", formnovalidate: true }, "Cancel")));
    dialog.append(form);
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "go" && this.begin(vm.id, "migrate")) {
        this.api.migrate(vm.id, { destination_host_id: dest.value, live: live.checked,
                                  copy_storage: storage.value as "none" | "all" | "inc" })
          .then((accepted) => this.api.getMigration(accepted.migration_id))
          .then((job) => {
            this.apply({ type: "migration", data: job });
            this.apply({ type: "vm", data: { ...vm, migration_id: job.id } });
            announce(`Migrating ${vm.name} to ${this.hostName(job.destination_host_id)}`);
          })
          .catch((err) => showError(err, `Migrate ${vm.name}`))
          .finally(() => this.end(vm.id));
      }
      dialog.remove();
      (document.querySelector<HTMLElement>(`[data-key="mig-${vm.id}"]`) ?? document.body).focus();
    });
    document.body.append(dialog);
    dialog.showModal();
    dest.focus();
  }

  // --- charts ---
  private showCharts(kind: "vms" | "hosts", id: string): void {
    this.chartTarget = { kind, id };
    const body = document.getElementById("perf-body") as HTMLElement;
    const name = kind === "hosts" ? this.hosts.get(id)?.hostname ?? id : this.vms.get(id)?.name ?? id;
    (document.getElementById("perf-h") as HTMLElement).textContent = `Performance: ${name}`;
    const win = h("select", { id: "chart-window" }, ...WINDOWS.map(([s, l]) => h("option", { value: s }, l)));
    win.value = String(this.chartWindow);
    const step = h("select", { id: "chart-step" }, ...STEPS.map(([s, l]) => h("option", { value: s }, l)));
    step.value = String(this.chartStep);
    const onChange = () => { this.chartWindow = Number(win.value); this.chartStep = Number(step.value); this.loadCharts(); };
    win.addEventListener("change", onChange);
    step.addEventListener("change", onChange);
    this.charts?.destroy();
    this.charts = new Charts();
    replace(body, h("div", { class: "chart-controls" },
      h("label", { for: "chart-window" }, "Window"), win, h("label", { for: "chart-step" }, "Step"), step,
      h("span", { class: "muted" }, "Times in UTC, as the API gives them")),
      this.charts.root);
    document.getElementById("perf")?.scrollIntoView({ block: "nearest" });
    this.loadCharts();
    window.clearInterval(this.chartTimer);
    // Performance logs are not in the change feed: fetch the window again every few seconds.
    this.chartTimer = window.setInterval(() => this.loadCharts(), 3000);
  }

  private stopCharts(): void {
    window.clearInterval(this.chartTimer);
    this.charts?.destroy();
    this.charts = null;
    this.chartTarget = null;
  }

  /** No charts (their host or VM belonged to a world that is gone): the panel's first words. */
  private closeCharts(): void {
    if (!this.chartTarget) return;
    this.stopCharts();
    (document.getElementById("perf-h") as HTMLElement).textContent = "Performance";
    replace(document.getElementById("perf-body") as HTMLElement,
      h("p", { class: "note" }, "Choose “Charts” on a host or a VM."));
  }

  private loadCharts(): void {
    const target = this.chartTarget;
    const charts = this.charts;
    if (!target || !charts) return;
    const span = this.chartWindow;
    const step = this.chartStep || Math.max(10, Math.round(span / 180 / 10) * 10);
    // The server's clock may be virtual: the default window (the last hour, ending
    // now) tells us its "now"; a longer window is asked for from there.
    this.api.metrics(target.kind, target.id, { step })
      .then((last) => span <= 3600 ? { series: last, from: last.end - span }
        : this.api.metrics(target.kind, target.id, { start: last.end - span, end: last.end, step })
          .then((series) => ({ series, from: series.start })))
      .then(({ series, from }) => { if (this.charts === charts) charts.show(series, from); })
      .catch((err) => { window.clearInterval(this.chartTimer); showError(err, "Charts"); });
  }
}

/** A migration's bar and percentage, updated in place (progress comes twice a second). */
function setProgress(el: HTMLElement, job: Migration | undefined): void {
  const pct = job ? job.progress.percent : 0;
  const bar = el.querySelector("progress");
  if (bar && bar.value !== pct) bar.value = pct;
  const text = el.querySelector(".pct");
  if (text) text.textContent = `${pct.toFixed(0)} %`;
}

async function main(): Promise<void> {
  let config: PageConfig = { backend: "?", simulator: false, demo_users: [] };
  try {
    const res = await fetch("config.json");
    if (res.ok) config = (await res.json()) as PageConfig;
  } catch {
    // Served without its config (a file copy): no demo users, no simulator panel.
  }
  // Served at /dashboard/ or, for a sandbox, at /sandboxes/{id}/dashboard/: the API
  // and the control plane are below the same prefix.
  const prefix = location.pathname.replace(/\/dashboard(\/.*)?$/, "");
  const sandbox = /^\/sandboxes\/([^/]+)$/.exec(prefix)?.[1];
  (document.getElementById("where") as HTMLElement).textContent =
    sandbox ? `sandbox ${sandbox}` : config.simulator ? "simulator" : config.backend;
  (document.getElementById("swagger") as HTMLAnchorElement).href = `${prefix}/api/v1/ui/`;
  if (sandbox) document.title = `Cockpit dashboard: sandbox ${sandbox}`;
  await new Dashboard(config, prefix, sandbox !== undefined).boot();
}

main().catch((err) => showError(err, "Starting the dashboard"));
