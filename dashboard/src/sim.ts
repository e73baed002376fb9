// The simulator panel (admins, simulated backend only): the control plane of
// cockpit_api/control.yaml, plus sandboxes where the server has them.
import { Api, ApiError, type FaultRequest, type Host, type LatencyRequest, type Sandbox, type ScenarioDocument,
         type SimState, type Vm } from "./api.js";
import { announce, badge, h, replace, showError } from "./dom.js";
import { readScenario, ScenarioFileError } from "./scenariofile.js";

// A scenario's name (control.yaml's pattern). Chromium compiles `pattern` with the `v`
// flag, where a `-` in a class must be escaped: "[A-Za-z0-9_-]" is invalid there, and an
// invalid pattern checks nothing (any name reached the server).
const SCENARIO_NAME = "[A-Za-z0-9_\\-]{1,64}";
const SCENARIO_FILES = ".json,.yaml,.yml,.txt,application/json,text/plain";

/** The picked scenario file's document, or null when none is picked (the name is used). */
async function pickedScenario(input: HTMLInputElement): Promise<ScenarioDocument | null> {
  const file = input.files?.[0];
  if (!file) return null;
  try {
    return readScenario(file.name, await file.text()) as ScenarioDocument;
  } catch (err) {
    // Shown like a server's problem, in the same place.
    if (err instanceof ScenarioFileError) throw new ApiError(0, "Cannot read this file", err.message, "");
    throw err;
  }
}

export class SimPanel {
  private sandboxes: Sandbox[] | null = null; // null: none here (no sandboxes, or inside one)
  private sandboxNote = "";
  private sandboxMax = 0;
  private speedInput: HTMLInputElement | null = null;
  private timer: number | undefined;
  private drawnHosts = "";
  private readonly stateBox: HTMLElement;
  private readonly hostBox: HTMLElement;
  private readonly sandboxBox: HTMLElement;

  /** `relist(true)`: the world was replaced (a scenario, a reset); `inSandbox`: this page is a sandbox's. */
  constructor(private readonly api: Api, root: HTMLElement, private readonly relist: (replaced: boolean) => Promise<void>,
              private readonly hostChanged: (host: Host) => void, private readonly hosts: () => Host[],
              private readonly vms: () => Vm[], inSandbox: boolean) {
    this.stateBox = h("dl", { class: "sim-state", "aria-live": "off" });
    this.hostBox = h("div", { class: "sim-hosts" });
    this.sandboxBox = h("div", { class: "sim-sandboxes" });
    replace(root,
      this.stateBox,
      this.group("Scenario", this.scenarioForm()),
      this.group("Clock", this.clockForm()),
      this.group("Latency", this.latencyForm()),
      this.group("Hosts", this.hostBox),
      this.group("Fault", this.faultForm()),
      this.group("Sandboxes", this.sandboxBox));
    if (inSandbox) {
      // Sandboxes are made from the default world only (its control plane answers 403
      // inside one): say so without asking.
      this.sandboxNote = "Sandboxes are made from the default world's dashboard.";
      this.renderSandboxes();
    } else {
      this.loadSandboxes().catch(() => undefined);
    }
    // The clock moves by itself (speed > 0) and the change feed does not carry it: look again.
    this.timer = window.setInterval(() => { this.refresh().catch(() => undefined); }, 2000);
  }

  stop(): void {
    window.clearInterval(this.timer);
  }

  private group(title: string, body: HTMLElement): HTMLElement {
    return h("fieldset", { class: "sim-group" }, h("legend", {}, title), body);
  }

  /** `then`: what the call changed, to list again ("world": all of it was replaced). */
  private run(what: string, call: () => Promise<unknown>, then: "none" | "hosts" | "world" = "none"): void {
    call()
      .then((res) => {
        if (res && typeof res === "object" && "now" in res) this.showState(res as SimState);
        announce(`${what}: done`);
        return then === "none" ? undefined : this.relist(then === "world");
      })
      .catch((err) => showError(err, what));
  }

  async refresh(): Promise<void> {
    try {
      this.showState(await this.api.simState());
    } catch (err) {
      // Not fatal: the panel just shows the last state it had.
      if (!(err instanceof ApiError)) throw err;
    }
  }

  private showState(s: SimState): void {
    // The speed box shows the clock's speed, unless the user is typing in it.
    if (this.speedInput && document.activeElement !== this.speedInput) this.speedInput.value = String(s.speed);

    const row = (k: string, v: string, key: string) => [h("dt", {}, k), h("dd", { "data-sim": key }, v)];
    replace(this.stateBox,
      ...row("Scenario", `${s.scenario} (seed ${s.seed})`, "scenario"),
      ...row("Now", `${new Date(Math.floor(s.now) * 1000).toISOString().replace(".000Z", " UTC").replace("T", " ")}`, "now"),
      ...row("Speed", `${s.speed}×`, "speed"),
      ...row("Latency", `${s.latency_ms} ms`, "latency"),
      ...row("Inventory", `${s.hosts} hosts, ${s.vms} VMs`, "inventory"),
      ...row("Active", `${s.migrations_active} migrations, ${s.faults_armed} faults armed`, "active"));
  }

  private scenarioForm(): HTMLElement {
    const name = h("input", { id: "sim-scenario", list: "sim-scenarios", value: "default", required: true,
                              pattern: SCENARIO_NAME, title: "letters, digits, _ and -, at most 64" });
    const file = h("input", { id: "sim-scenario-file", type: "file", accept: SCENARIO_FILES,
                              title: "a file made by cockpit-api snapshot, or a JSON scenario; it wins over the name" });
    const form = h("form", { class: "row" },
      h("label", { for: "sim-scenario" }, "Name"), name,
      h("datalist", { id: "sim-scenarios" }, h("option", { value: "default" }), h("option", { value: "large" })),
      h("label", { for: "sim-scenario-file" }, "or file"), file,
      h("button", { type: "submit" }, "Load"),
      h("button", { type: "button", id: "sim-reset",
                    onclick: () => this.run("Reset", () => this.api.simReset(), "world") }, "Reset"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const picked = file.files?.[0];
      this.run(picked ? `Load scenario file ${picked.name}` : `Load scenario ${name.value}`,
        () => pickedScenario(file).then((data) => data ? this.api.simScenarioData(data) : this.api.simScenario(name.value)),
        "world");
    });
    return form;
  }

  private clockForm(): HTMLElement {
    const speed = h("input", { id: "sim-speed", type: "number", min: 0, max: 10000, step: "any", value: "1" });
    this.speedInput = speed;
    const advance = h("input", { id: "sim-advance", type: "number", min: 0, max: 31536000, step: "any", value: "10" });
    const speedForm = h("form", { class: "row" },
      h("label", { for: "sim-speed" }, "Speed (virtual s per s)"), speed, h("button", { type: "submit" }, "Set speed"));
    speedForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.run("Set speed", () => this.api.simClock({ speed: Number(speed.value) }));
    });
    const advanceForm = h("form", { class: "row" },
      h("label", { for: "sim-advance" }, "Advance (s)"), advance,
      h("button", { type: "submit", id: "sim-advance-go" }, "Advance"));
    advanceForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.run(`Advance ${advance.value} s`, () => this.api.simClock({ advance: Number(advance.value) }));
    });
    return h("div", {}, speedForm, advanceForm);
  }

  private latencyForm(): HTMLElement {
    const ms = h("input", { id: "sim-latency", type: "number", min: 0, max: 60000, step: 1, value: "0" });
    const path = h("input", { id: "sim-latency-path", placeholder: "every API call", maxlength: 500 });
    const form = h("form", { class: "grid2" },
      h("label", { for: "sim-latency" }, "Delay (ms)"), ms,
      h("label", { for: "sim-latency-path" }, "Only paths like"), path,
      h("p", { class: "note hint" }, "e.g. /api/v1/vms/*/migrate; empty: every /api/v1 answer"),
      h("div", { class: "buttons" }, h("button", { type: "submit" }, "Set latency")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const request: LatencyRequest = path.value.trim()
        ? { ms: Number(ms.value), path: path.value.trim() } : { ms: Number(ms.value) };
      this.run("Set latency", () => this.api.simLatency(request));
    });
    return form;
  }

  renderHosts(): void {
    const hosts = this.hosts().sort((a, b) => a.hostname.localeCompare(b.hostname));
    // Redrawn only when a host changed: a press on a button here survives other events.
    const drawn = JSON.stringify(hosts.map((x) => [x.id, x.hostname, x.status]));
    if (drawn === this.drawnHosts) return;
    this.drawnHosts = drawn;
    replace(this.hostBox, h("ul", { class: "sim-host-items" }, ...hosts.map((x) => {
      const up = x.status === "connected";
      const what = up ? "disconnect" : "reconnect";
      return h("li", {}, h("span", {}, x.hostname.split(".")[0], " ", badge(x.status)),
        h("button", { type: "button", class: up ? "small danger" : "small", "data-key": `sim-${what}-${x.id}`,
                      "data-sim-host": x.id, "aria-label": `${up ? "Disconnect" : "Reconnect"} ${x.hostname}`,
                      onclick: () => this.run(`${up ? "Disconnect" : "Reconnect"} ${x.hostname}`,
                        () => this.api.simHost(x.id, what).then((host) => { this.hostChanged(host); return null; }), "hosts") },
          up ? "Disconnect" : "Reconnect"));
    })));
  }

  private faultForm(): HTMLElement {
    const op = h("select", { id: "fault-op" }, h("option", { value: "migrate" }, "migration"), h("option", { value: "action" }, "power action"));
    const mode = h("select", { id: "fault-mode" }, h("option", { value: "fail" }, "fail mid-way"), h("option", { value: "reject" }, "reject the call"));
    const status = h("select", { id: "fault-status" }, h("option", { value: "503" }, "503"), h("option", { value: "409" }, "409"));
    const at = h("input", { id: "fault-at", type: "number", min: 0, max: 99, value: "50" });
    const count = h("input", { id: "fault-count", type: "number", min: 1, max: 1000, value: "1" });
    const message = h("input", { id: "fault-message", maxlength: 500, value: "injected fault" });
    // A targeted fault (one VM, or the VMs of one host) is used up only by calls on it.
    const target = h("select", { id: "fault-target" }, h("option", { value: "" }, "any call"));
    target.addEventListener("focus", () => {
      const keep = target.value;
      target.replaceChildren(h("option", { value: "" }, "any call"),
        h("optgroup", { label: "VMs of host" }, ...this.hosts().map((x) => h("option", { value: `host:${x.id}` }, x.hostname))),
        h("optgroup", { label: "One VM" }, ...this.vms().sort((a, b) => a.name.localeCompare(b.name))
          .map((v) => h("option", { value: `vm:${v.id}` }, v.name))));
      target.value = keep;
    });
    const form = h("form", { class: "grid2" },
      h("label", { for: "fault-op" }, "Operation"), op,
      h("label", { for: "fault-target" }, "Target"), target,
      h("label", { for: "fault-mode" }, "Mode"), mode,
      h("label", { for: "fault-status" }, "Status (reject)"), status,
      h("label", { for: "fault-at" }, "At % (fail)"), at,
      h("label", { for: "fault-count" }, "Times"), count,
      h("label", { for: "fault-message" }, "Message"), message,
      h("div", { class: "buttons" }, h("button", { type: "submit", id: "fault-arm" }, "Arm fault"),
        h("button", { type: "button", onclick: () => this.run("Clear faults", () => this.api.simClearFaults()) },
          "Clear faults")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const fault: FaultRequest = op.value === "migrate" && mode.value === "fail"
        ? { operation: "migrate", mode: "fail", at_percent: Number(at.value), count: Number(count.value), message: message.value }
        : { operation: op.value as "migrate" | "action", mode: "reject", status: Number(status.value) as 409 | 503,
            count: Number(count.value), message: message.value };
      const [kind, id] = target.value.split(":");
      if (kind === "vm") fault.vm_id = id;
      if (kind === "host") fault.host_id = id;
      this.run("Arm fault", () => this.api.simFault(fault));
    });
    return form;
  }

  private async loadSandboxes(): Promise<void> {
    try {
      const res = await this.api.listSandboxes();
      this.sandboxes = res.sandboxes;
      this.sandboxMax = res.max;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      this.sandboxes = null;
      this.sandboxNote = err.status === 403 ? "Sandboxes are made from the default world's dashboard."
        : err.status === 404 || err.status === 405 ? "This server has no sandboxes." : `${err.title}: ${err.detail}`;
    }
    this.renderSandboxes();
  }

  private renderSandboxes(): void {
    if (this.sandboxes === null) {
      replace(this.sandboxBox, h("p", { class: "note" }, this.sandboxNote));
      return;
    }
    const scenario = h("input", { id: "sandbox-scenario", value: "default", list: "sim-scenarios",
                                  pattern: SCENARIO_NAME, title: "letters, digits, _ and -, at most 64", required: true });
    const file = h("input", { id: "sandbox-file", type: "file", accept: SCENARIO_FILES });
    const speed = h("input", { id: "sandbox-speed", type: "number", min: 0, max: 10000, step: "any", value: "1" });
    const label = h("input", { id: "sandbox-label", maxlength: 200, placeholder: "optional" });
    const form = h("form", { class: "grid2" },
      h("label", { for: "sandbox-scenario" }, "Scenario"), scenario,
      h("label", { for: "sandbox-file" }, "Or a scenario file"), file,
      h("p", { class: "note hint" }, "made by cockpit-api snapshot, or JSON; a file wins over the name"),
      h("label", { for: "sandbox-speed" }, "Speed"), speed,
      h("label", { for: "sandbox-label" }, "Label"), label,
      h("div", { class: "buttons" }, h("button", { type: "submit", id: "sandbox-new" }, "New sandbox")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const extra = { speed: Number(speed.value), ...(label.value ? { label: label.value } : {}) };
      pickedScenario(file).then((data) => this.api.createSandbox({ scenario: data ?? scenario.value, ...extra })).then((sb) => {
        announce(`Sandbox ${sb.id} created`);
        return this.loadSandboxes();
      }).catch((err) => showError(err, "New sandbox"));
    });
    const list = this.sandboxes;
    replace(this.sandboxBox,
      list.length ? h("ul", { class: "sandbox-items" }, ...list.map((sb) => h("li", { "data-sandbox": sb.id },
        h("span", {}, h("code", {}, sb.id), ` ${sb.scenario}${sb.label ? ` — ${sb.label}` : ""}`),
        h("a", { href: `${sb.path}/dashboard/`, target: "_blank", rel: "noopener", "data-key": `sb-open-${sb.id}`,
                 "aria-label": `Open sandbox ${sb.id} in a new tab` }, "Open"),
        h("button", { type: "button", class: "small danger", "data-key": `sb-del-${sb.id}`,
                      "aria-label": `Delete sandbox ${sb.id}`, onclick: () => {
            this.api.deleteSandbox(sb.id).then(() => this.loadSandboxes()).catch((err) => showError(err, "Delete sandbox"));
          } }, "Delete")))) : h("p", { class: "note" }, "No sandboxes yet."),
      h("p", { class: "muted" }, `${list.length} of at most ${this.sandboxMax}; each is its own world with its own users.`),
      form);
  }
}
