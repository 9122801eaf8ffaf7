// Types of the clarion browser client (clarion.js).

export type TransportName = "ws" | "sse" | "poll";

export declare const SUBPROTOCOL: "clarion.v1";
export declare const TRANSPORTS: readonly TransportName[];
export declare const TOKEN_EXPIRED: 4004;

/** The hub's close codes: each one's reason, and whether a client comes back after it. */
export declare const CLOSE_CODES: Readonly<Record<number, { reason: string; reconnect: boolean }>>;
/** The hub's error codes: the HTTP status of each, and the close code when it ends a connection. */
export declare const ERRORS: Readonly<Record<string, { status: number; close: number }>>;
/** Whether a client should reconnect after a close or disconnect `code` (the hub's table). */
export declare function shouldReconnect(code: number | null | undefined): boolean;
/** The rule of an error code; for a code outside the table, the one its HTTP status implies. */
export declare function errorRule(
  code: string, status?: number,
): { status: number; close: number; reconnect: boolean };
/** What a refusal means: try again with a fresh token, after a delay, stop, or fail one request. */
export declare function refusal(
  code: string, options?: { status?: number; refreshable?: boolean; whole?: boolean },
): "refresh" | "backoff" | "stop" | "fail";
/** Whether a connection that ended with `code` ends the client. */
export declare function endsClient(
  code: number | null | undefined, reconnect: boolean | null | undefined, refreshable: boolean,
): boolean;
/** A full-jitter exponential backoff delay in milliseconds. */
export declare function backoffDelay(
  attempt: number, base?: number, cap?: number, random?: () => number,
): number;

export interface Endpoints {
  http: string; ws: string; sse: string; poll: string; healthz: string;
  publish: string; history: string; presence: string; presence_stats: string;
}
/** Every endpoint of a hub from its base URL (or one of its transport URLs). */
export declare function endpoints(url: string, base?: string): Endpoints;
/** The `exp` claim of a JWT (Unix seconds), or null. The signature is not checked. */
export declare function tokenExpiry(token: string | null | undefined): number | null;
/** Milliseconds until a token expiring at `expires` (Unix seconds) should be refreshed. */
export declare function refreshDelay(expires: number, now?: number): number;

export interface SseEvent { type: string; data: string; id: string }
export interface SseParserOptions {
  onEvent?: (event: SseEvent) => void;
  onId?: (id: string) => void;
  onRetry?: (ms: number) => void;
  onComment?: (text: string) => void;
  /** Longest line accepted, in characters (default 4 MiB); longer throws. */
  maxLine?: number;
}
/** An incremental parser of the text/event-stream format. */
export declare class SseParser {
  constructor(options?: SseParserOptions);
  feed(chunk: Uint8Array | string): void;
  end(): void;
  lastId: string;
}

/** Where cursors are kept: `localStorage`, a `Map`, or any get/set. */
export type CursorStore =
  | { getItem(key: string): string | null; setItem(key: string, value: string): void }
  | { get(key: string): string | null | undefined; set(key: string, value: string): unknown };

export interface ConnectOptions {
  /** Called at connect and whenever the token expired or is about to; null for anonymous. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** A fixed token (prefer getToken: a fixed token cannot be refreshed). */
  token?: string;
  /** Transports to use, best first (default ["ws", "sse", "poll"]). */
  transports?: TransportName[];
  /** One transport only, or "auto" (the default). */
  transport?: TransportName | "auto";
  /** Keeps each subscription's cursor, so that a reload resumes. */
  store?: CursorStore;
  /** Prefix of the store's keys (default "clarion:cursor:"): one per channel, and one per
   * channel behind a "*" for where its event stream opened. */
  storePrefix?: string;
  /** Backoff base and cap in milliseconds (defaults 500 and 20000). */
  backoffBase?: number;
  backoffCap?: number;
  /** How often to try a better transport after a fallback, in ms (default 60000; 0: never). */
  upgradeInterval?: number;
  /** Seconds a long poll waits (default 25, at most 60); a hub whose poll.timeout_max is
   * lower gets 10, then plain polls a second apart. */
  pollTimeout?: number;
  /** Milliseconds a WebSocket may take to answer the connect op, and /healthz a health check (default 10000). */
  openTimeout?: number;
  /** Milliseconds without a byte after which an SSE stream is reopened (default 45000). */
  sseSilence?: number;
  /** Milliseconds without a frame on a WebSocket after which the client sends a ping op
   * (default 25000; 0: never), and how long its answer may take before the connection is
   * taken for dead and replaced (pongTimeout, default 10000). */
  pingInterval?: number;
  pongTimeout?: number;
  /** Milliseconds publish, history and presence wait for the hub's answer (default 10000):
   * then they reject with code "timeout". */
  requestTimeout?: number;
  /** Milliseconds getToken() may take (default 10000): then the try fails as if it threw. */
  tokenTimeout?: number;
  /** The hub's limits.max_message_bytes (default 65536): a larger WebSocket request is
   * refused at once with `too_large`, never sent (the hub would close the connection, 1009).
   * null: no check. */
  maxMessageBytes?: number | null;
  /** The page's URL to resolve a relative `url` against (default: location). */
  base?: string;
  onState?: (state: ClientState, transport: TransportName | null) => void;
  onDisconnect?: (event: DisconnectedEvent) => void;
}

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

export interface ConnectionEvent { transport: TransportName | null }
export interface DisconnectedEvent extends ConnectionEvent {
  code: number | null; reason: string; reconnect: boolean;
}

/** A publication stored in the channel's stream. */
export interface StoredPublication<T = unknown> {
  channel: string; offset: number; epoch: string; data: T; time: number; cursor: string;
  info?: { client?: string; user?: string; info?: unknown }; id?: string; ephemeral?: undefined;
}
/** A live signal (published with `ephemeral`): never stored, no offset, moves no cursor. */
export interface EphemeralPublication<T = unknown> {
  channel: string; ephemeral: true; key?: string; data: T; time: number;
  info?: { client?: string; user?: string; info?: unknown };
}
export type Publication<T = unknown> = StoredPublication<T> | EphemeralPublication<T>;
/** History could not cover a gap: told once per gap; on a resume, right after the `subscribed`
 * event that says `recovered: false`. */
export interface ResetEvent { channel: string; reason: "epoch" | "trimmed" | "position" | "lost" | string; cursor: string }
/** `recovered`: false when the subscription resumed from a cursor that history could not cover
 * (its `reset` event comes next), on every transport; true otherwise. */
export interface SubscribedEvent { channel: string; recovered: boolean; cursor: string | null; transport: TransportName | null }
export interface UnsubscribedEvent {
  channel: string;
  /** "client" (unsubscribe() or close()), "server" (the backend's /api/unsubscribe),
   * "forbidden", or the error code that ended it (those two after an error event). */
  reason: string;
}
export interface PresenceEvent { channel: string; client: string; user: string | null; transport: string; info?: unknown }

/** From a stream request: `channel`, the one channel the hub refused; `cursor`, the cursor it
 * could not read; `limit`, the cap the request went over. */
export interface ClarionError extends Error {
  code: string; status?: number; channel?: string; cursor?: string; limit?: number;
}

export interface SubscribeOptions<T = unknown> {
  /** Resume after this cursor (default: the store's cursor for the channel). */
  since?: string;
  /** Starting from now, first deliver the newest stored publication. */
  latest?: boolean;
  onPublication?: (pub: Publication<T>) => void;
  onReset?: (reset: ResetEvent) => void;
  onSubscribing?: (event: { channel: string }) => void;
  onSubscribed?: (event: SubscribedEvent) => void;
  onUnsubscribed?: (event: UnsubscribedEvent) => void;
  onJoin?: (event: PresenceEvent) => void;
  onLeave?: (event: PresenceEvent) => void;
  /** The hub refused the subscription, or ended it for a reason other than the backend's
   * unsubscribe (e.g. forbidden: a refreshed token no longer allows the channel). */
  onError?: (error: ClarionError) => void;
}

interface SubscriptionEvents<T> {
  publication: Publication<T>; reset: ResetEvent; subscribing: { channel: string };
  subscribed: SubscribedEvent; unsubscribed: UnsubscribedEvent;
  join: PresenceEvent; leave: PresenceEvent; error: ClarionError;
}

export interface Subscription<T = unknown> {
  readonly channel: string;
  readonly cursor: string | null;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  on<K extends keyof SubscriptionEvents<T>>(event: K, fn: (e: SubscriptionEvents<T>[K]) => void): () => void;
  off<K extends keyof SubscriptionEvents<T>>(event: K, fn: (e: SubscriptionEvents<T>[K]) => void): void;
  unsubscribe(): void;
}

export interface PublishResult { offset: number; epoch: string; cursor: string }
export interface HistoryOptions { since?: string; limit?: number; reverse?: boolean }
export interface HistoryResult<T = unknown> {
  publications: StoredPublication<T>[]; cursor: string; more: boolean;
  reset?: { channel: string; reason: string };
}
export interface PresenceResult {
  clients: { client: string; user: string | null; transport: string; info?: unknown }[];
  /** Per user, their connections aggregated. */
  users?: { user: string; clients: string[]; info?: unknown }[];
  [key: string]: unknown;
}

interface ClientEvents {
  connecting: ConnectionEvent; connected: ConnectionEvent; disconnected: DisconnectedEvent;
  closed: ConnectionEvent; error: Error; subscription: Subscription;
}

export interface Client {
  /** The transport in use, or being tried. */
  readonly transport: TransportName | null;
  readonly state: ClientState;
  /** The hub's id for this connection and the token's user (WebSocket only). */
  readonly clientId: string | null;
  readonly user: string | null;
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  getSubscription(channel: string): Subscription | null;
  /** A live signal: delivered to live subscribers, never stored, no offset; `key` (e.g. the
   * user id): a subscriber that falls behind keeps only the latest signal per key. */
  publish(
    channel: string, data: unknown, options: { ephemeral: true; key?: string },
  ): Promise<{ ephemeral: true }>;
  /** `id`: an idempotency key. */
  publish(
    channel: string, data: unknown, options?: { id?: string; ephemeral?: false },
  ): Promise<PublishResult>;
  history<T = unknown>(channel: string, options?: HistoryOptions): Promise<HistoryResult<T>>;
  presence(channel: string): Promise<PresenceResult>;
  /** How many clients and distinct users are present. */
  presenceStats(channel: string): Promise<{ clients: number; users: number }>;
  on<K extends keyof ClientEvents>(event: K, fn: (e: ClientEvents[K]) => void): () => void;
  on(event: "state", fn: (state: ClientState, transport: TransportName | null) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  /** Ends every subscription (unsubscribed, reason "client"), then the client (closed). */
  close(): void;
}

export declare function connect(url: string, options?: ConnectOptions): Client;
