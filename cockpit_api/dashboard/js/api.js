/** A failed call, carrying the server's problem (or one made up for a network failure). */
export class ApiError extends Error {
    constructor(status, title, detail, code) {
        super(`${title}: ${detail}`);
        /** The server's X-Request-Id for this call, when it sends one (to quote in a report). */
        this.requestId = "";
        /** Each faulty field of a request that failed validation, when the server names them. */
        this.fields = [];
        this.status = status;
        this.title = title;
        this.detail = detail;
        this.code = code;
    }
    static async from(res) {
        let body = {};
        try {
            body = (await res.json());
        }
        catch {
            // Not JSON (a proxy's error page): keep the status line.
        }
        const err = new ApiError(res.status, body.title ?? (res.statusText || `HTTP ${res.status}`), body.detail ?? "", body.code ?? "");
        const extra = body;
        if (Array.isArray(extra.errors)) {
            err.fields = extra.errors.filter((e) => typeof e === "object" && e !== null && typeof e.pointer === "string" && typeof e.detail === "string");
        }
        err.requestId = typeof extra.request_id === "string" ? extra.request_id : res.headers.get("X-Request-Id") ?? "";
        return err;
    }
}
/** What a JWT access token says about its holder (the signature is the server's business). */
export function identityOf(token) {
    const part = token.split(".")[1] ?? "";
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json);
    return { username: claims.sub ?? "?", role: claims.role ?? "viewer", expiresAt: claims.exp ?? 0 };
}
const SESSION_KEY = "cockpit.session";
export class Api {
    constructor(prefix = "") {
        this.session = null;
        this.refreshing = null;
        this.onLoggedOut = () => undefined;
        /** The X-Feed-Position of the last list answered (where the feed should resume). */
        this.feedPosition = null;
        this.base = `${prefix}/api/v1`;
        this.control = `${prefix}/_sim`;
        const saved = sessionStorage.getItem(SESSION_KEY + prefix);
        if (saved)
            this.session = JSON.parse(saved);
        this.storageKey = SESSION_KEY + prefix;
    }
    get identity() {
        return this.session ? identityOf(this.session.token) : null;
    }
    get token() {
        return this.session?.token ?? null;
    }
    async login(username, password) {
        const pair = await this.call("POST", `${this.base}/auth/login`, { username, password }, false);
        this.keep(pair);
        return identityOf(pair.token);
    }
    async logout() {
        const s = this.session;
        this.forget();
        if (s) {
            await this.call("POST", `${this.base}/auth/logout`, { refresh_token: s.refresh }, false).catch(() => null);
        }
    }
    /** Resume a session kept in this tab; false when there is none or it cannot be refreshed. */
    async resume() {
        if (!this.session)
            return false;
        try {
            await this.refresh();
            return true;
        }
        catch {
            this.forget();
            return false;
        }
    }
    keep(pair) {
        this.session = { token: pair.token, refresh: pair.refresh_token };
        sessionStorage.setItem(this.storageKey, JSON.stringify(this.session));
        window.clearTimeout(this.refreshTimer);
        // Refresh at 80% of the token's life, so no call ever carries an expired one.
        this.refreshTimer = window.setTimeout(() => {
            this.refresh().catch(() => this.expire("your session ended: log in again"));
        }, Math.max(5, pair.expires_in * 0.8) * 1000);
    }
    forget() {
        window.clearTimeout(this.refreshTimer);
        this.session = null;
        sessionStorage.removeItem(this.storageKey);
    }
    expire(reason) {
        this.forget();
        this.onLoggedOut(reason);
    }
    async refresh() {
        if (!this.session)
            throw new ApiError(401, "Unauthorized", "not logged in", "invalid_token");
        const refresh = this.session.refresh;
        this.refreshing ?? (this.refreshing = this.call("POST", `${this.base}/auth/refresh`, { refresh_token: refresh }, false)
            .then((pair) => this.keep(pair))
            .finally(() => { this.refreshing = null; }));
        return this.refreshing;
    }
    /** One call; a 401 on an authenticated call refreshes once and retries. */
    async call(method, url, body, auth = true, retry = true) {
        const headers = { Accept: "application/json" };
        if (body !== undefined)
            headers["Content-Type"] = "application/json";
        if (auth && this.session)
            headers.Authorization = `Bearer ${this.session.token}`;
        let res;
        try {
            res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
        }
        catch (err) {
            throw new ApiError(0, "The server cannot be reached", String(err), "network");
        }
        if (res.status === 401 && auth && retry && this.session) {
            try {
                await this.refresh();
            }
            catch {
                this.expire("your session ended: log in again");
                throw await ApiError.from(res);
            }
            return this.call(method, url, body, auth, false);
        }
        if (!res.ok)
            throw await ApiError.from(res);
        const position = res.headers.get("X-Feed-Position");
        if (position !== null)
            this.feedPosition = position;
        if (res.status === 204)
            return null;
        return (await res.json());
    }
    // --- the public API (paths of openapi.yaml) ---
    listHosts(cursor) {
        return this.call("GET", this.url("/hosts", { limit: 1000, cursor }));
    }
    listVms(query) {
        return this.call("GET", this.url("/vms", query));
    }
    getVm(id) {
        return this.call("GET", `${this.base}/vms/${id}`);
    }
    action(id, request) {
        return this.call("POST", `${this.base}/vms/${id}/action`, request);
    }
    migrate(id, request) {
        return this.call("POST", `${this.base}/vms/${id}/migrate`, request);
    }
    listMigrations(query) {
        return this.call("GET", this.url("/migrations", query));
    }
    getMigration(id) {
        return this.call("GET", `${this.base}/migrations/${id}`);
    }
    cancel(id) {
        return this.call("POST", `${this.base}/migrations/${id}/cancel`);
    }
    metrics(kind, id, query) {
        return this.call("GET", this.url(`/${kind}/${id}/metrics`, query));
    }
    // --- the simulator's control plane (cockpit_api/control.yaml) ---
    simState() {
        return this.call("GET", `${this.control}/state`);
    }
    simReset() {
        return this.call("POST", `${this.control}/reset`);
    }
    simScenario(name) {
        return this.call("POST", `${this.control}/scenario`, { name });
    }
    /** A whole scenario document (a file read in the browser), sent inline. */
    simScenarioData(data) {
        return this.call("POST", `${this.control}/scenario`, { data });
    }
    simHost(id, what) {
        return this.call("POST", `${this.control}/hosts/${id}/${what}`);
    }
    simFault(fault) {
        return this.call("POST", `${this.control}/faults`, fault);
    }
    simClearFaults() {
        return this.call("DELETE", `${this.control}/faults`);
    }
    simLatency(request) {
        return this.call("POST", `${this.control}/latency`, request);
    }
    simClock(request) {
        return this.call("POST", `${this.control}/clock`, request);
    }
    // Sandboxes: made, listed and dropped from the default world only (403 inside one).
    listSandboxes() {
        return this.call("GET", `${this.control}/sandboxes`);
    }
    createSandbox(request) {
        return this.call("POST", `${this.control}/sandboxes`, request);
    }
    deleteSandbox(id) {
        return this.call("DELETE", `${this.control}/sandboxes/${id}`);
    }
    url(path, query = {}) {
        const params = new URLSearchParams();
        for (const [k, v] of Object.entries(query)) {
            if (v !== undefined && v !== null && v !== "")
                params.set(k, String(v));
        }
        const qs = params.toString();
        return `${this.base}${path}${qs ? `?${qs}` : ""}`;
    }
}
