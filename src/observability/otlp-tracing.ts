// OpenTelemetry traces over OTLP/HTTP (JSON), for a broker started with OTEL_EXPORTER_OTLP_ENDPOINT: its own
// provider, context and propagator, nothing global. Loaded only then, so a broker without tracing loads no SDK.
import { AsyncLocalStorage } from "node:async_hooks";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type Tracer } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";
import { requestPath } from "../http/request-path.ts";
import type { Attributes, SpanHandle, SpanKindName, Tracing } from "./tracing.ts";

/** How long a stopping broker waits for its last spans to be sent. */
const SHUTDOWN_WAIT_MS = 2000;

const KINDS: Record<SpanKindName, SpanKind> = { client: SpanKind.CLIENT, internal: SpanKind.INTERNAL };

const headerGetter = {
  get: (headers: Headers, key: string) => headers.get(key) ?? undefined,
  keys: (headers: Headers) => [...headers.keys()],
};

export interface OtlpTracingOptions {
  /** OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base URL; spans go to its /v1/traces. */
  endpoint: string;
  serviceName: string;
  /** How long spans wait to be sent in a batch; the SDK's 5 s by default. */
  exportDelayMs?: number;
}

/** Tracing through this broker's own provider, context and propagator, so several brokers share a process. */
export class OtlpTracing implements Tracing {
  readonly enabled = true;
  private readonly provider: NodeTracerProvider;
  private readonly tracer: Tracer;
  private readonly contexts = new AsyncLocalStorage<Context>();
  private readonly propagator = new W3CTraceContextPropagator();

  constructor(options: OtlpTracingOptions) {
    const exporter = new OTLPTraceExporter({ url: `${options.endpoint.replace(/\/+$/, "")}/v1/traces` });
    this.provider = new NodeTracerProvider({
      resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: options.serviceName }),
      spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: options.exportDelayMs ?? 5000 })],
    });
    this.tracer = this.provider.getTracer("forgejo-mcp-broker");
  }

  async serve(request: Request, handle: (request: Request) => Response | Promise<Response>): Promise<Response> {
    const parent = this.propagator.extract(ROOT_CONTEXT, request.headers, headerGetter);
    const path = requestPath(request.url);
    // The path alone: a query may carry an authorization code or state.
    const span = this.tracer.startSpan(`${request.method} ${path}`, { kind: SpanKind.SERVER, attributes: { "http.request.method": request.method, "url.path": path } }, parent);
    try {
      const response = await this.contexts.run(trace.setSpan(parent, span), () => handle(request));
      span.setAttribute("http.response.status_code", response.status);
      if (response.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      return response;
    } catch (error) {
      failed(span, error);
      throw error;
    } finally {
      span.end();
    }
  }

  start(name: string, attributes: Attributes = {}, kind: SpanKindName = "internal"): SpanHandle {
    const span = this.tracer.startSpan(name, { kind: KINDS[kind], attributes }, this.active());
    return {
      end: (more, error) => {
        if (more !== undefined) span.setAttributes(more);
        if (error !== undefined) failed(span, error);
        span.end();
      },
      traceparent: () => {
        const carrier: Record<string, string> = {};
        this.propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, { set: (c, key, value) => void (c[key] = value) });
        return carrier.traceparent ?? null;
      },
    };
  }

  inSpan<T>(name: string, attributes: Attributes, run: () => T): T {
    const span = this.tracer.startSpan(name, { attributes }, this.active());
    let result: T;
    try {
      result = this.contexts.run(trace.setSpan(this.active(), span), run);
    } catch (error) {
      failed(span, error);
      span.end();
      throw error;
    }
    if (result instanceof Promise) {
      return result.then(
        (value) => (span.end(), value),
        (error: unknown) => {
          failed(span, error);
          span.end();
          throw error;
        },
      ) as T;
    }
    span.end();
    return result;
  }

  outside<T>(run: () => T): T {
    return this.contexts.exit(run);
  }

  flush(): Promise<void> {
    return this.provider.forceFlush();
  }

  /** Sends what is left, waiting at most SHUTDOWN_WAIT_MS: a collector that is down must not hold up the broker's stop. */
  async shutdown(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_WAIT_MS)));
    await Promise.race([this.provider.shutdown().catch(() => {}), waited]);
    clearTimeout(timer);
  }

  private active(): Context {
    return this.contexts.getStore() ?? ROOT_CONTEXT;
  }
}

/** Marks a span failed with the error's class name: its message might quote what must not leave the broker. */
function failed(span: Span, error: unknown): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.name : "error" });
}
