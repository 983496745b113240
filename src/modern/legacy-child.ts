// A principal's 2025-era child as modern callers share it: the broker initializes it once as its only
// client; each call's child questions become MRTR (ModernCall), and its list changes and resource updates go to the listen streams (Listeners).
import type { ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import type { ChildProcess } from "../supervisor/child.ts";
import { discoverResult } from "./discover.ts";
import { ModernCall } from "./modern-call.ts";
import { PrincipalChild, type CallOptions, type Caller, type PrincipalChildOptions } from "./principal-child.ts";
import { logWanted } from "./results.ts";
import { honoredFilter, listenFilter, Listeners } from "./subscriptions.ts";

/** The legacy version the broker speaks to its child, and the client capabilities it will translate into MRTR. */
const CHILD_PROTOCOL_VERSION = "2025-11-25";
const BROKER_CLIENT_CAPABILITIES = { elicitation: {}, sampling: {}, roots: {} };

/** A call on a legacy child: the child's questions to its client go to the one it belongs to. */
export interface LegacyCaller extends Caller {
  /** The child asked its client something (elicitation, sampling, roots) while this was its one call running. */
  asks(request: ChildRequest): void;
  /** Its questions went out and it waits for its caller's retry: its handler in the child waits on their answers. */
  readonly waitingForRetry: boolean;
}

export class LegacyPrincipalChild extends PrincipalChild<LegacyCaller> {
  private initialized: Record<string, unknown> | null = null;
  private readonly listeners: Listeners;

  constructor(child: ChildProcess, options: PrincipalChildOptions) {
    super(child, options);
    this.listeners = new Listeners({
      maxMessageBytes: options.maxMessageBytes,
      total: options.listenerCount,
      resourceSubscription: (method, uri) => this.resourceSubscription(method, uri),
      // The idle clock starts when the last listener goes, not when it came.
      ended: () => this.touch(),
    });
  }

  /** The child's InitializeResult (capabilities, serverInfo, instructions); set once initialize succeeded. */
  get initializeResult(): Record<string, unknown> {
    if (this.initialized === null) throw new Error("the principal's child is not initialized");
    return this.initialized;
  }

  get discoverResult(): Record<string, unknown> {
    return discoverResult(this.initializeResult);
  }

  get listening(): number {
    return this.listeners.size;
  }

  /** The callers' calls not parked for a retry (the broker's own resource subscriptions count as parked: they ask no caller). */
  get runningCalls(): number {
    return this.channel.calls.filter((call) => !call.waitingForRetry).length;
  }

  /** Initializes the child as its only client, declaring what the broker translates, and tells it initialized. */
  async start(timeoutMs: number): Promise<string | null> {
    const params = { protocolVersion: CHILD_PROTOCOL_VERSION, capabilities: BROKER_CLIENT_CAPABILITIES, clientInfo: { name: "forgejo-mcp-broker", version: "1" } };
    const answer = await this.brokerRequest("initialize", params, timeoutMs, (caller) => ({
      ...caller,
      waitingForRetry: false,
      asks: (asked) => asked.refuse(ErrorCode.Undeliverable, `${asked.method} cannot be answered during initialize`),
    }));
    if (typeof answer === "string") return answer;
    if ("error" in answer) return `the MCP server refused initialize: ${JSON.stringify(answer.error)}`;
    this.initialized = (answer.result ?? {}) as Record<string, unknown>;
    const initialized = JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" });
    this.channel.notify({ raw: initialized, message: JSON.parse(initialized) as JsonRpcMessage });
    return null;
  }

  /** The call's answer, or an input_required its retry resumes (ModernCall). */
  call(incoming: IncomingMessage, options: CallOptions = {}): MessageStream {
    this.touch();
    const call = new ModernCall(
      incoming,
      options.sse ?? true,
      {
        ...this.options,
        cancel: (handle, reason) => this.channel.cancel(handle, reason),
        restartTimeout: (handle, ms) => this.channel.restartTimeout(handle, ms),
        over: () => this.over(() => {}),
        waiting: () => this.callsChanged(),
      },
      options.given,
    );
    call.handle = this.channel.call(incoming, call);
    return call.current;
  }

  /** Acknowledges the part of its filter the child can send (by its capabilities); the broker fans the child's notifications out. */
  listen(incoming: IncomingMessage): MessageStream {
    const filter = honoredFilter(listenFilter(incoming.message.params), this.initializeResult.capabilities);
    this.touch();
    return this.listeners.listen(incoming.message.id as JsonRpcId, filter);
  }

  /** The broker's own fan-out moves as it is; the next child is subscribed to the uris the streams name. */
  handOverListeners(next: PrincipalChild): void {
    if (next instanceof LegacyPrincipalChild) this.listeners.moveTo(next.listeners);
  }

  protected endListeners(reason: string): void {
    this.listeners.endAll(reason);
  }

  /**
   * A legacy child's request names no call it belongs to: it is relayed (as MRTR) to the one call running
   * on the child (or, when none is, the one call in flight), and refused otherwise. A call waiting for its
   * caller's retry is not running (its handler waits on the answers it asked for), so a caller that never
   * retries does not stop the next caller from being asked. Every call on the child is of one grant: a
   * wrong guess cannot ask one user another user's question.
   */
  protected childRequest(request: ChildRequest, callsOfChild: () => LegacyCaller[]): void {
    if (request.method === "ping") {
      request.reply({});
      return;
    }
    const calls = callsOfChild();
    const running = calls.filter((call) => !call.waitingForRetry);
    // With nothing running, the one call waiting is still the only one it can be (asking more at once).
    const owner = running.length === 1 ? running[0] : running.length === 0 && calls.length === 1 ? calls[0] : undefined;
    if (owner === undefined) {
      this.options.logger.warn("a modern caller's child asked its client something with no single call it can belong to; refused", { method: request.method, in_flight: calls.length, running: running.length });
      request.refuse(ErrorCode.Undeliverable, `${request.method} cannot be delivered: ${calls.length} calls are in flight on this server, ${running.length} running, so the broker cannot tell which caller to ask`);
      return;
    }
    owner.asks(request);
  }

  /** List changes and resource updates go to the listeners that asked for them; a log to the one call in flight when it asked for that level. */
  protected childNotification(incoming: IncomingMessage, callsOfChild: () => LegacyCaller[]): void {
    if (this.listeners.deliver(incoming)) return;
    if (incoming.message.method !== "notifications/message") return;
    const calls = callsOfChild();
    const level = (incoming.message.params as { level?: unknown } | undefined)?.level;
    if (calls.length === 1 && logWanted(level, calls[0]!.logLevel)) calls[0]!.progress(incoming);
  }

  /** The broker's own legacy resources/subscribe or unsubscribe for its listeners; a refusal only loses those updates. */
  private resourceSubscription(method: "resources/subscribe" | "resources/unsubscribe", uri: string): void {
    const request = { jsonrpc: "2.0", id: 0, method, params: { uri } };
    const unanswered = (why: string) => this.options.logger.warn("the child did not take the broker's resource subscription", { method, why });
    this.channel.call({ raw: JSON.stringify(request), message: request }, {
      logLevel: undefined,
      // It never asks its caller anything, so a child's question is never its own.
      waitingForRetry: true,
      progress: () => {},
      answered: (answer) => {
        if ("error" in answer.message) unanswered(JSON.stringify(answer.message.error));
      },
      failed: (_code, message) => unanswered(message),
      cancelled: () => {},
      asks: (asked) => asked.refuse(ErrorCode.Undeliverable, `${asked.method} cannot be answered during ${method}`),
    });
  }
}
