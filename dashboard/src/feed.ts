// The change feed's client (the contract in COORD "Change feed"): a ticket, then an
// EventSource on /api/v1/events resumed from the last event id; `reset` means re-list.
// A server without the feed answers the ticket with 404: then the page polls instead,
// so it works on servers from before the feed, and goes live once it is there.
import { Api, ApiError, type Host, type Migration, type Vm } from "./api.js";

export type Change =
  | { type: "host"; data: Host }
  | { type: "vm"; data: Vm }
  | { type: "vm_removed"; data: { id: string } }
  | { type: "migration"; data: Migration }
  | { type: "reset" };

export type FeedMode = "connecting" | "live" | "polling" | "reconnecting" | "stopped";

export interface FeedClient {
  /** Apply one change to the page's state. */
  apply(change: Change): void;
  /** Load everything again (at start, after `reset`, after a gap the feed cannot fill). */
  relist(): Promise<void>;
  /** Without the feed: fetch what is on screen and apply it. */
  poll(): Promise<void>;
  mode(mode: FeedMode, detail: string): void;
}

const TYPES = ["host", "vm", "vm_removed", "migration", "reset"] as const;

export class ChangeFeed {
  private source: EventSource | null = null;
  private lastId: string | null = null;
  private pollTimer: number | undefined;
  private retryTimer: number | undefined;
  private polling = false;
  private backoff = 500;
  private stopped = false;

  constructor(private readonly api: Api, private readonly client: FeedClient,
              private readonly pollMs = 1000) {}

  /** Where a list taken just now ends in the feed (its X-Feed-Position). */
  set position(id: string | null) {
    if (id) this.lastId = id;
  }

  async start(): Promise<void> {
    this.stopped = false;
    this.client.mode("connecting", "");
    await this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.source?.close();
    this.source = null;
    window.clearInterval(this.pollTimer);
    window.clearTimeout(this.retryTimer);
    this.pollTimer = undefined;
    this.client.mode("stopped", "");
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let ticket: string;
    try {
      const res = await this.api.call<{ ticket: string; expires_in: number }>(
        "POST", `${this.api.base}/events/ticket`);
      ticket = res.ticket;
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        // No change feed on this server: poll what is on screen.
        this.startPolling("polling", "this server has no change feed: polling every second");
        return;
      }
      this.retry(err instanceof ApiError ? err.message : String(err));
      return;
    }
    const params = new URLSearchParams({ ticket });
    if (this.lastId) params.set("last_event_id", this.lastId);
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
      if (this.source === source) this.source = null;
      this.retry("the change feed dropped");
    };
    for (const type of TYPES) {
      source.addEventListener(type, (ev: MessageEvent<string>) => this.receive(type, ev));
    }
  }

  private receive(type: (typeof TYPES)[number], ev: MessageEvent<string>): void {
    if (ev.lastEventId) this.lastId = ev.lastEventId;
    if (type === "reset") {
      this.client.relist().catch(() => undefined);
      return;
    }
    const data = JSON.parse(ev.data) as never;
    this.client.apply({ type, data } as Change);
  }

  private retry(why: string): void {
    if (this.stopped) return;
    // Until the feed is back, keep the page current by polling.
    this.startPolling("reconnecting", `${why}; reconnecting (polling meanwhile)`);
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => { this.connect().catch(() => undefined); }, this.backoff);
    this.backoff = Math.min(this.backoff * 2, 15000);
  }

  private startPolling(mode: FeedMode, detail: string): void {
    this.client.mode(mode, detail);
    if (this.pollTimer !== undefined) return;
    this.pollTimer = window.setInterval(() => { this.pollOnce().catch(() => undefined); }, this.pollMs);
  }

  private stopPolling(): void {
    window.clearInterval(this.pollTimer);
    this.pollTimer = undefined;
  }

  /** One poll, never two at once (a slow server must not pile requests up). */
  async pollOnce(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      await this.client.poll();
    } finally {
      this.polling = false;
    }
  }
}
