// The change feed's client (the contract in COORD "Change feed"): a ticket, then an
// EventSource on /api/v1/events resumed from the last event id; `reset` means re-list.
// A server without the feed answers the ticket with 404: then the page polls instead,
// so it works on servers from before the feed, and goes live once it is there.
import { ApiError } from "./api.js";
const TYPES = ["host", "vm", "vm_removed", "migration", "reset"];
export class ChangeFeed {
    constructor(api, client, pollMs = 1000) {
        this.api = api;
        this.client = client;
        this.pollMs = pollMs;
        this.source = null;
        this.lastId = null;
        this.polling = false;
        this.backoff = 500;
        this.stopped = false;
    }
    /** Where a list taken just now ends in the feed (its X-Feed-Position). */
    set position(id) {
        if (id)
            this.lastId = id;
    }
    async start() {
        this.stopped = false;
        this.client.mode("connecting", "");
        await this.connect();
    }
    stop() {
        this.stopped = true;
        this.source?.close();
        this.source = null;
        window.clearInterval(this.pollTimer);
        window.clearTimeout(this.retryTimer);
        this.pollTimer = undefined;
        this.client.mode("stopped", "");
    }
    async connect() {
        if (this.stopped)
            return;
        let ticket;
        try {
            const res = await this.api.call("POST", `${this.api.base}/events/ticket`);
            ticket = res.ticket;
        }
        catch (err) {
            if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
                // No change feed on this server: poll what is on screen.
                this.startPolling("polling", "this server has no change feed: polling every second");
                return;
            }
            this.retry(err instanceof ApiError ? err.message : String(err));
            return;
        }
        const params = new URLSearchParams({ ticket });
        if (this.lastId)
            params.set("last_event_id", this.lastId);
        const source = new EventSource(`${this.api.base}/events?${params.toString()}`);
        this.source = source;
        source.onopen = () => {
            this.backoff = 500;
            this.stopPolling();
            this.client.mode("live", "live updates from the change feed");
        };
        source.onerror = () => {
            // A ticket is single-use: let the browser not retry with it; get a new one.
            source.close();
            if (this.source === source)
                this.source = null;
            this.retry("the change feed dropped");
        };
        for (const type of TYPES) {
            source.addEventListener(type, (ev) => this.receive(type, ev));
        }
    }
    receive(type, ev) {
        if (ev.lastEventId)
            this.lastId = ev.lastEventId;
        if (type === "reset") {
            this.client.relist().catch(() => undefined);
            return;
        }
        const data = JSON.parse(ev.data);
        this.client.apply({ type, data });
    }
    retry(why) {
        if (this.stopped)
            return;
        // Until the feed is back, keep the page current by polling.
        this.startPolling("reconnecting", `${why}; reconnecting (polling meanwhile)`);
        window.clearTimeout(this.retryTimer);
        this.retryTimer = window.setTimeout(() => { this.connect().catch(() => undefined); }, this.backoff);
        this.backoff = Math.min(this.backoff * 2, 15000);
    }
    startPolling(mode, detail) {
        this.client.mode(mode, detail);
        if (this.pollTimer !== undefined)
            return;
        this.pollTimer = window.setInterval(() => { this.pollOnce().catch(() => undefined); }, this.pollMs);
    }
    stopPolling() {
        window.clearInterval(this.pollTimer);
        this.pollTimer = undefined;
    }
    /** One poll, never two at once (a slow server must not pile requests up). */
    async pollOnce() {
        if (this.polling)
            return;
        this.polling = true;
        try {
            await this.client.poll();
        }
        finally {
            this.polling = false;
        }
    }
}
