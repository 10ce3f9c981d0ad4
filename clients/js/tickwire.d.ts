// Type declarations for tickwire.js.

export type TransportName = 'websocket' | 'sse' | 'polling';
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Where a channel's stream is: the last seq delivered and the epoch it belongs to. */
export interface Position {
  seq: number;
  epoch: string;
}

export type Positions = Record<string, Position>;

/** One update as handed to a subscribe handler. */
export interface Update<T = unknown> {
  ch: string;
  seq: number;
  data: T;
}

export interface StateEvent {
  state: ConnectionState;
  transport: TransportName;
  /** With 'reconnecting': the delay before the next attempt. */
  retryInMs?: number;
  /** With 'reconnecting': how many attempts since the last stable connection. */
  attempt?: number;
  /** With 'reconnecting', when known: the WebSocket close code, or the HTTP status of a failed poll. */
  code?: number;
  /** With 'reconnecting', when known: the close reason or what failed. */
  reason?: string;
}

export interface GapEvent {
  ch: string;
  expected: number;
  got: number;
}

export interface ResyncEvent {
  ch: string;
  epoch: string;
  reason: string;
}

export interface ErrorEvent {
  /**
   * A server code (`forbidden`, `bad_channel`, `rate_limited`, ...) or one of
   * the client's own: `policy` (closed with 1008), `callback` (a listener or
   * handler threw), `token` (getToken failed), `transport` (a transport could
   * not be created), `bad_message` (a frame that is not JSON).
   */
  code: string;
  message: string;
  /** The channels concerned; these subscriptions were dropped when code is 'forbidden'. */
  channels?: string[];
  /** With code 'callback': what the callback threw. */
  error?: unknown;
}

/** Any JSON object the server sent (update, subscribed, resync, pong, ...). */
export type ServerMessage = { type: string; [key: string]: unknown };

export interface EventMap {
  state: StateEvent;
  gap: GapEvent;
  resync: ResyncEvent;
  error: ErrorEvent;
  message: ServerMessage;
}

export interface BackoffOptions {
  /** First ceiling of the full-jitter delay (default 250). */
  initialMs?: number;
  /** Cap of the ceiling (default 10000). */
  maxMs?: number;
  /** A connection open this long resets the schedule (default 10000). */
  stableMs?: number;
}

export interface ConnectOptions {
  /** A static JWT, sent as `?token=` (WebSocket, SSE, polling). */
  token?: string;
  /** Called on every (re)connect and on token_expiring; wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** Fallback order (default ['websocket', 'sse', 'polling']). */
  transports?: TransportName[];
  backoff?: BackoffOptions;
  /** App-level `{"op":"ping"}` period on WebSocket (default 15000). */
  pingIntervalMs?: number;
  /** Reconnect when nothing arrived for this long (default 2.5 * pingIntervalMs). */
  watchdogMs?: number;
  /** Failed opens in a row before moving to the next transport (default 2). */
  failuresBeforeFallback?: number;
  /** Abort a long-poll that has not answered after this long (default 35000). */
  pollAbortMs?: number;
  /** Ask for batched WebSocket messages, one server message per line (default true). */
  batch?: boolean;

  // Injectables (tests, Node, custom environments). Default: the globals.
  WebSocket?: new (url: string) => any;
  EventSource?: new (url: string) => any;
  fetch?: (url: string, init?: any) => Promise<{ ok: boolean; status: number; json(): Promise<any> }>;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (id: any) => void;
  now?: () => number;
  random?: () => number;
  /** Where `online` is listened for (default: the global window, if any). */
  window?: { addEventListener(type: string, fn: () => void): void; removeEventListener(type: string, fn: () => void): void } | null;
  /** Where `visibilitychange` is listened for (default: the global document, if any). */
  document?: {
    visibilityState: string;
    addEventListener(type: string, fn: () => void): void;
    removeEventListener(type: string, fn: () => void): void;
  } | null;
}

export declare class TickwireClient {
  constructor(url: string, options?: ConnectOptions);
  readonly state: ConnectionState;
  readonly transport: TransportName;
  /** Adds a handler for a channel; returns a function that removes this handler (and unsubscribes after the last one). */
  subscribe<T = unknown>(ch: string, handler: (u: Update<T>) => void): () => void;
  /** Drops every handler of the channel and unsubscribes on the server. */
  unsubscribe(ch: string): void;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof EventMap>(event: K, fn: (e: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, fn: (e: EventMap[K]) => void): void;
  /** The last seq and epoch of every channel that has delivered an update. */
  positions(): Positions;
  /** Final: closes the connection, stops every timer, no reconnect. */
  close(): void;
}

/** Opens a client. `url`: ws://, wss://, http:// or https:// (the others are derived). */
export declare function connect(url: string, options?: ConnectOptions): TickwireClient;

/** Full-jitter delay: uniform in [0, min(maxMs, initialMs * 2^attempt)). */
export declare function backoffDelay(
  attempt: number,
  backoff: { initialMs: number; maxMs: number },
  random?: () => number,
): number;

/** `NAME~SEQ~EPOCH` entries joined by commas. */
export declare function encodeResumeToken(positions: Positions): string;
export declare function parseResumeToken(token: string): Positions;
/** The `exp` claim of a JWT (seconds since the epoch), or null; the signature is not checked. */
export declare function tokenExpiry(jwt: string): number | null;
export declare function deriveUrls(url: string): { ws: string; http: string };
export declare const VERSION: string;
