// The API client: typed against openapi.yaml and control.yaml through the types
// openapi-typescript generates (dashboard/build.py writes src/generated/), so a spec
// change that breaks the page fails tsc. Errors are the problem+json shape.
import type { components, paths } from "./generated/cockpit.js";
import type { paths as simPaths } from "./generated/control.js";

export type Schemas = components["schemas"];
export type Host = Schemas["Host"];
export type Vm = Schemas["Vm"];
export type VmStatus = Schemas["VmStatus"];
export type Migration = Schemas["Migration"];
export type MetricSeries = Schemas["MetricSeries"];
export type MetricPoint = Schemas["MetricPoint"];
export type Problem = Schemas["Problem"];
export type TokenPair = Schemas["TokenPair"];
export type ActionRequest = Schemas["ActionRequest"];
export type MigrateRequest = Schemas["MigrateRequest"];

// The JSON body an operation answers with one status.
type Body<Op, S extends number> = Op extends { responses: infer R }
  ? S extends keyof R
    ? R[S] extends { content: { "application/json": infer T } } ? T : never
    : never
  : never;
type Query<Op> = Op extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;
type JsonIn<Op> = Op extends { requestBody?: infer RB }
  ? NonNullable<RB> extends { content: { "application/json": infer B } } ? B : never
  : never;

export type HostList = Body<paths["/hosts"]["get"], 200>;
export type VmList = Body<paths["/vms"]["get"], 200>;
export type MigrationList = Body<paths["/migrations"]["get"], 200>;
export type VmQuery = Query<paths["/vms"]["get"]>;
export type MetricsQuery = Query<paths["/vms/{id}/metrics"]["get"]>;
export type SimState = Body<simPaths["/state"]["get"], 200>;
export type FaultRequest = JsonIn<simPaths["/faults"]["post"]>;
export type ClockRequest = JsonIn<simPaths["/clock"]["post"]>;
export type SandboxList = Body<simPaths["/sandboxes"]["get"], 200>;
export type Sandbox = SandboxList["sandboxes"][number];
export type SandboxRequest = NonNullable<JsonIn<simPaths["/sandboxes"]["post"]>>;
export type LatencyRequest = JsonIn<simPaths["/latency"]["post"]>;
export type ScenarioDocument = NonNullable<JsonIn<simPaths["/scenario"]["post"]>["data"]>;

/** A failed call, carrying the server's problem (or one made up for a network failure). */
export class ApiError extends Error {
  readonly status: number;
  readonly title: string;
  readonly detail: string;
  readonly code: string;
  /** The server's X-Request-Id for this call, when it sends one (to quote in a report). */
  requestId = "";
  /** Each faulty field of a request that failed validation, when the server names them. */
  fields: { pointer: string; detail: string }[] = [];

  constructor(status: number, title: string, detail: string, code: string) {
    super(`${title}: ${detail}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.code = code;
  }

  static async from(res: Response): Promise<ApiError> {
    let body: Partial<Problem> = {};
    try {
      body = (await res.json()) as Partial<Problem>;
    } catch {
      // Not JSON (a proxy's error page): keep the status line.
    }
    const err = new ApiError(res.status, body.title ?? (res.statusText || `HTTP ${res.status}`),
      body.detail ?? "", body.code ?? "");
    const extra = body as { request_id?: unknown; errors?: unknown };
    if (Array.isArray(extra.errors)) {
      err.fields = extra.errors.filter((e): e is { pointer: string; detail: string } =>
        typeof e === "object" && e !== null && typeof e.pointer === "string" && typeof e.detail === "string");
    }
    err.requestId = typeof extra.request_id === "string" ? extra.request_id : res.headers.get("X-Request-Id") ?? "";
    return err;
  }
}

export interface Identity {
  username: string;
  role: string;
  expiresAt: number; // Unix seconds
}

/** What a JWT access token says about its holder (the signature is the server's business). */
export function identityOf(token: string): Identity {
  const part = token.split(".")[1] ?? "";
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  const claims = JSON.parse(json) as { sub?: string; role?: string; exp?: number };
  return { username: claims.sub ?? "?", role: claims.role ?? "viewer", expiresAt: claims.exp ?? 0 };
}

const SESSION_KEY = "cockpit.session";

interface Session {
  token: string;
  refresh: string;
}

export class Api {
  /** `/api/v1`, or a sandbox's `/sandboxes/{id}/api/v1`. */
  readonly base: string;
  readonly control: string;
  private session: Session | null = null;
  private refreshTimer: number | undefined;
  private refreshing: Promise<void> | null = null;
  onLoggedOut: (reason: string) => void = () => undefined;

  constructor(prefix = "") {
    this.base = `${prefix}/api/v1`;
    this.control = `${prefix}/_sim`;
    const saved = sessionStorage.getItem(SESSION_KEY + prefix);
    if (saved) this.session = JSON.parse(saved) as Session;
    this.storageKey = SESSION_KEY + prefix;
  }

  private readonly storageKey: string;
  /** The X-Feed-Position of the last list answered (where the feed should resume). */
  feedPosition: string | null = null;

  get identity(): Identity | null {
    return this.session ? identityOf(this.session.token) : null;
  }

  get token(): string | null {
    return this.session?.token ?? null;
  }

  async login(username: string, password: string): Promise<Identity> {
    const pair = await this.call<TokenPair>("POST", `${this.base}/auth/login`,
      { username, password } satisfies Schemas["LoginRequest"], false);
    this.keep(pair);
    return identityOf(pair.token);
  }

  async logout(): Promise<void> {
    const s = this.session;
    this.forget();
    if (s) {
      await this.call<null>("POST", `${this.base}/auth/logout`,
        { refresh_token: s.refresh } satisfies Schemas["RefreshRequest"], false).catch(() => null);
    }
  }

  /** Resume a session kept in this tab; false when there is none or it cannot be refreshed. */
  async resume(): Promise<boolean> {
    if (!this.session) return false;
    try {
      await this.refresh();
      return true;
    } catch {
      this.forget();
      return false;
    }
  }

  private keep(pair: TokenPair): void {
    this.session = { token: pair.token, refresh: pair.refresh_token };
    sessionStorage.setItem(this.storageKey, JSON.stringify(this.session));
    window.clearTimeout(this.refreshTimer);
    // Refresh at 80% of the token's life, so no call ever carries an expired one.
    this.refreshTimer = window.setTimeout(() => {
      this.refresh().catch(() => this.expire("your session ended: log in again"));
    }, Math.max(5, pair.expires_in * 0.8) * 1000);
  }

  private forget(): void {
    window.clearTimeout(this.refreshTimer);
    this.session = null;
    sessionStorage.removeItem(this.storageKey);
  }

  private expire(reason: string): void {
    this.forget();
    this.onLoggedOut(reason);
  }

  private async refresh(): Promise<void> {
    if (!this.session) throw new ApiError(401, "Unauthorized", "not logged in", "invalid_token");
    const refresh = this.session.refresh;
    this.refreshing ??= this.call<TokenPair>("POST", `${this.base}/auth/refresh`,
      { refresh_token: refresh } satisfies Schemas["RefreshRequest"], false)
      .then((pair) => this.keep(pair))
      .finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  /** One call; a 401 on an authenticated call refreshes once and retries. */
  async call<T>(method: "GET" | "POST" | "DELETE", url: string, body?: unknown,
                auth = true, retry = true): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && this.session) headers.Authorization = `Bearer ${this.session.token}`;
    let res: Response;
    try {
      res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, "The server cannot be reached", String(err), "network");
    }
    if (res.status === 401 && auth && retry && this.session) {
      try {
        await this.refresh();
      } catch {
        this.expire("your session ended: log in again");
        throw await ApiError.from(res);
      }
      return this.call<T>(method, url, body, auth, false);
    }
    if (!res.ok) throw await ApiError.from(res);
    const position = res.headers.get("X-Feed-Position");
    if (position !== null) this.feedPosition = position;
    if (res.status === 204) return null as T;
    return (await res.json()) as T;
  }

  // --- the public API (paths of openapi.yaml) ---
  listHosts(cursor?: string): Promise<HostList> {
    return this.call("GET", this.url("/hosts", { limit: 1000, cursor } satisfies Query<paths["/hosts"]["get"]>));
  }

  listVms(query: VmQuery): Promise<VmList> {
    return this.call("GET", this.url("/vms", query));
  }

  getVm(id: string): Promise<Body<paths["/vms/{id}"]["get"], 200>> {
    return this.call("GET", `${this.base}/vms/${id}`);
  }

  action(id: string, request: ActionRequest): Promise<Body<paths["/vms/{id}/action"]["post"], 200>> {
    return this.call("POST", `${this.base}/vms/${id}/action`, request);
  }

  migrate(id: string, request: MigrateRequest): Promise<Body<paths["/vms/{id}/migrate"]["post"], 202>> {
    return this.call("POST", `${this.base}/vms/${id}/migrate`, request);
  }

  listMigrations(query: Query<paths["/migrations"]["get"]>): Promise<MigrationList> {
    return this.call("GET", this.url("/migrations", query));
  }

  getMigration(id: string): Promise<Body<paths["/migrations/{migration_id}"]["get"], 200>> {
    return this.call("GET", `${this.base}/migrations/${id}`);
  }

  cancel(id: string): Promise<Body<paths["/migrations/{migration_id}/cancel"]["post"], 200>> {
    return this.call("POST", `${this.base}/migrations/${id}/cancel`);
  }

  metrics(kind: "vms" | "hosts", id: string, query: MetricsQuery): Promise<MetricSeries> {
    return this.call("GET", this.url(`/${kind}/${id}/metrics`, query));
  }

  // --- the simulator's control plane (cockpit_api/control.yaml) ---
  simState(): Promise<SimState> {
    return this.call("GET", `${this.control}/state`);
  }

  simReset(): Promise<SimState> {
    return this.call("POST", `${this.control}/reset`);
  }

  simScenario(name: string): Promise<SimState> {
    return this.call("POST", `${this.control}/scenario`,
      { name } satisfies JsonIn<simPaths["/scenario"]["post"]>);
  }

  /** A whole scenario document (a file read in the browser), sent inline. */
  simScenarioData(data: ScenarioDocument): Promise<SimState> {
    return this.call("POST", `${this.control}/scenario`,
      { data } satisfies JsonIn<simPaths["/scenario"]["post"]>);
  }

  simHost(id: string, what: "disconnect" | "reconnect"): Promise<Host> {
    return this.call("POST", `${this.control}/hosts/${id}/${what}`);
  }

  simFault(fault: FaultRequest): Promise<SimState> {
    return this.call("POST", `${this.control}/faults`, fault);
  }

  simClearFaults(): Promise<SimState> {
    return this.call("DELETE", `${this.control}/faults`);
  }

  simLatency(request: LatencyRequest): Promise<SimState> {
    return this.call("POST", `${this.control}/latency`, request);
  }

  simClock(request: ClockRequest): Promise<SimState> {
    return this.call("POST", `${this.control}/clock`, request);
  }

  // Sandboxes: made, listed and dropped from the default world only (403 inside one).
  listSandboxes(): Promise<SandboxList> {
    return this.call("GET", `${this.control}/sandboxes`);
  }

  createSandbox(request: SandboxRequest): Promise<Sandbox> {
    return this.call("POST", `${this.control}/sandboxes`, request);
  }

  deleteSandbox(id: string): Promise<null> {
    return this.call("DELETE", `${this.control}/sandboxes/${id}`);
  }

  url(path: string, query: object = {}): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
    }
    const qs = params.toString();
    return `${this.base}${path}${qs ? `?${qs}` : ""}`;
  }
}
