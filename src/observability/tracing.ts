// What the broker's parts ask of tracing: a server span per HTTP request and child spans around what it waits
// on. Off (no OTEL_EXPORTER_OTLP_ENDPOINT), the broker gets `noTracing` and never loads the OpenTelemetry SDK.
import type { Timers } from "../supervisor/timers.ts";

/** Span attribute values: what OTLP carries, never a token or secret. */
export type Attributes = Record<string, string | number | boolean>;
/** A span's role: the broker calling out (a child, Forgejo), or work inside it. */
export type SpanKindName = "client" | "internal";

/** A span the caller ends; `traceparent` names it, for a child that joins the trace. */
export interface SpanHandle {
  /** Ends the span; with an error, marks it failed (the error's name only: a message might quote a secret). */
  end(attributes?: Attributes, error?: unknown): void;
  traceparent(): string | null;
}

export interface Tracing {
  readonly enabled: boolean;
  /** Runs `handle` inside a server span for the request, a child of its `traceparent` when it carries one. */
  serve(request: Request, handle: (request: Request) => Response | Promise<Response>): Promise<Response>;
  /** A span under the one active now, ended by the caller. */
  start(name: string, attributes?: Attributes, kind?: SpanKindName): SpanHandle;
  /** `run` inside a span under the active one, ended when it returns or its promise settles. */
  inSpan<T>(name: string, attributes: Attributes, run: () => T): T;
  /** `run` with no active span: what it starts is a trace of its own. */
  outside<T>(run: () => T): T;
  /** Sends what is buffered. */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

export const noSpan: SpanHandle = { end: () => {}, traceparent: () => null };

export const noTracing: Tracing = {
  enabled: false,
  serve: async (request, handle) => handle(request),
  start: () => noSpan,
  inSpan: (_name, _attributes, run) => run(),
  outside: (run) => run(),
  flush: async () => {},
  shutdown: async () => {},
};


/**
 * `timers` whose callbacks run outside any span: a timer set while a request was traced (the refresh a session
 * start schedules, an idle reap) fires long after that request, and what it does is a trace of its own.
 */
export function untracedTimers(timers: Timers, tracing: Tracing): Timers {
  if (!tracing.enabled) return timers;
  return { ...timers, setTimeout: (fn, ms) => timers.setTimeout(() => tracing.outside(fn), ms) };
}
