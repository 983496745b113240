// One principal's (grant's) legacy child as modern callers share it: the broker initializes it once as
// its only client, then each caller's request gets a stream of its own progress, wanted logs and answer,
// and the child's questions to its client go to its one call in flight (MRTR, in ModernCall); its list
// changes and resource updates go to the listen streams open on it (Listeners).
import { ChildChannel, type ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import type { Logger } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import { ModernCall, type ModernCallSettings } from "./modern-call.ts";
import { logWanted } from "./results.ts";
import { honoredFilter, listenFilter, Listeners, type ListenerCount } from "./subscriptions.ts";

export interface PrincipalChildOptions extends ModernCallSettings {
  logger: Logger;
  /** The listen streams open over every grant, which MAX_LISTENERS bounds. */
  listenerCount: ListenerCount;
  /** The child exited without being asked to; its callers have had their errors. */
  onExit(exit: ChildExit): void;
}

/** Who waits on a call: a caller's stream, or the broker's own initialize. */
interface Caller {
  progress(incoming: IncomingMessage): void;
  answered(incoming: IncomingMessage): void;
  failed(code: number, message: string): void;
  cancelled(): void;
  /** The child asked its client something (elicitation, sampling, roots) while this was its one call running. */
  asks(request: ChildRequest): void;
  /** Its questions went out and it waits for its caller's retry: its handler in the child waits on their answers. */
  readonly waitingForRetry: boolean;
  /** The request's _meta logLevel: what notifications/message it wants (undefined: none). */
  readonly logLevel: unknown;
}

/** The legacy version the broker speaks to its child, and the client capabilities it will translate into MRTR. */
const CHILD_PROTOCOL_VERSION = "2025-11-25";
const BROKER_CLIENT_CAPABILITIES = { elicitation: {}, sampling: {}, roots: {} };

export class PrincipalChild {
  private readonly channel: ChildChannel<Caller>;
  private lastActive: number;
  private retiring = false;
  private initialized: Record<string, unknown> | null = null;
  private readonly listeners: Listeners;

  constructor(
    child: ChildProcess,
    private readonly options: PrincipalChildOptions,
  ) {
    this.lastActive = options.timers.now();
    this.listeners = new Listeners({
      maxMessageBytes: options.maxMessageBytes,
      total: options.listenerCount,
      resourceSubscription: (method, uri) => this.resourceSubscription(method, uri),
      // The idle clock starts when the last listener goes, not when it came.
      ended: () => (this.lastActive = options.timers.now()),
    });
    this.channel = new ChildChannel<Caller>(child, { ...options, multiplexed: true }, {
      progress: (caller, incoming) => caller.progress(incoming),
      answered: (caller, incoming) => this.over(() => caller.answered(incoming)),
      failed: (caller, code, message) => this.over(() => caller.failed(code, message)),
      cancelledByClient: (caller) => this.over(() => caller.cancelled()),
      childRequest: (request, callsOfChild) => this.childRequest(request, callsOfChild),
      childNotification: (incoming, callsOfChild) => this.childNotification(incoming, callsOfChild),
      childExited: (exit) => {
        this.listeners.endAll("the MCP server exited");
        options.onExit(exit);
      },
    });
  }

  /** The child's InitializeResult (capabilities, serverInfo, instructions); set once initialize succeeded. */
  get initializeResult(): Record<string, unknown> {
    if (this.initialized === null) throw new Error("the principal's child is not initialized");
    return this.initialized;
  }

  get inFlight(): number {
    return this.channel.inFlight;
  }

  /** By when at the latest the first call now in flight is over (its timeout); null when none is. */
  get earliestRequestDeadline(): number | null {
    return this.channel.earliestRequestDeadline;
  }

  /** How many listen streams are open on it: while any is, the child is not idle (its listeners wait for its news). */
  get listening(): number {
    return this.listeners.size;
  }

  get lastActivity(): number {
    return this.lastActive;
  }

  /** Null while it takes calls; otherwise why not (exited, closed, or retiring once its calls are over). */
  get closed(): string | null {
    return this.channel.closed ?? (this.retiring ? "the child is retiring" : null);
  }

  get childPid(): number {
    return this.channel.childPid;
  }

  /**
   * Initializes the child as its only client and tells it initialized. Resolves with null, or with why
   * it could not (the child's error, its exit, or no answer within `timeoutMs`, which closes it).
   */
  async initialize(timeoutMs: number): Promise<string | null> {
    const request = { jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: CHILD_PROTOCOL_VERSION, capabilities: BROKER_CLIENT_CAPABILITIES, clientInfo: { name: "forgejo-mcp-broker", version: "1" } } };
    const raw = JSON.stringify(request);
    const answer = await new Promise<JsonRpcMessage | string>((resolve) => {
      const timer = this.options.timers.setTimeout(() => {
        resolve(`the MCP server did not answer initialize within ${Math.round(timeoutMs / 1000)} s`);
        void this.close("the MCP server did not answer initialize in time");
      }, timeoutMs);
      const settle = (outcome: JsonRpcMessage | string) => {
        this.options.timers.clearTimeout(timer);
        resolve(outcome);
      };
      this.channel.call({ raw, message: request }, {
        logLevel: undefined,
        waitingForRetry: false,
        progress: () => {},
        answered: (incoming) => settle(incoming.message),
        failed: (_code, message) => settle(message),
        cancelled: () => settle("initialize was cancelled"),
        asks: (request) => request.refuse(ErrorCode.Undeliverable, `${request.method} cannot be answered during initialize`),
      });
    });
    if (typeof answer === "string") return answer;
    if ("error" in answer) return `the MCP server refused initialize: ${JSON.stringify(answer.error)}`;
    this.initialized = (answer.result ?? {}) as Record<string, unknown>;
    const initialized = JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" });
    this.channel.notify({ raw: initialized, message: JSON.parse(initialized) as JsonRpcMessage });
    return null;
  }

  /**
   * Sends a caller's request (its id and progress token rewritten by the channel); the stream yields its
   * progress and the log notifications it asked for — unless the caller takes no SSE (`sse` false) — then
   * its answer, or an input_required its retry resumes (ModernCall). Closing the stream cancels the call.
   */
  call(incoming: IncomingMessage, options: { sse?: boolean } = {}): MessageStream {
    this.lastActive = this.options.timers.now();
    const call = new ModernCall(incoming, options.sse ?? true, {
      ...this.options,
      cancel: (handle, reason) => this.channel.cancel(handle, reason),
      restartTimeout: (handle, ms) => this.channel.restartTimeout(handle, ms),
      over: () => this.over(() => {}),
    });
    call.handle = this.channel.call(incoming, call);
    return call.current;
  }

  /**
   * A subscriptions/listen: its stream starts with the acknowledgement of the part of its filter the child
   * can send, then carries those notifications until the caller closes it or the child goes (then it ends
   * with the listen's result). Throws McpRefusal: 400 for a malformed filter, 429 past a bound.
   */
  listen(incoming: IncomingMessage): MessageStream {
    const filter = honoredFilter(listenFilter(incoming.message.params), this.initializeResult.capabilities);
    this.lastActive = this.options.timers.now();
    return this.listeners.listen(incoming.message.id as JsonRpcId, filter);
  }

  /** No new calls; its listen streams end (their callers listen again, on the next child), and it stops once the calls in flight are over (now, if none is). */
  retire(reason: string): void {
    this.retiring = true;
    this.listeners.endAll(reason);
    if (this.channel.inFlight === 0) void this.close(reason);
  }

  /** Every call in flight fails now; resolves when the child has exited. */
  close(reason: string): Promise<void> {
    this.retiring = true;
    this.listeners.endAll(reason);
    return this.channel.close(reason);
  }

  /** A call is over: it counts as activity, and a retiring child with nothing left in flight stops. */
  private over(report: () => void): void {
    this.lastActive = this.options.timers.now();
    report();
    // Not while the channel closes (its failing of every call lands here too).
    if (this.retiring && this.channel.inFlight === 0 && this.channel.closed === null) void this.close("the child retired");
  }

  /**
   * A legacy child's request names no call it belongs to: it is relayed (as MRTR) to the one call running
   * on the child (or, when none is, the one call in flight), and refused otherwise. A call waiting for its
   * caller's retry is not running (its handler waits on the answers it asked for), so a caller that never
   * retries does not stop the next caller from being asked. Every call on the child is of one grant: a
   * wrong guess cannot ask one user another user's question.
   */
  private childRequest(request: ChildRequest, callsOfChild: () => Caller[]): void {
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

  /** List changes and resource updates go to the listeners that asked for them; a log to the one call in flight when it asked for that level. */
  private childNotification(incoming: IncomingMessage, callsOfChild: () => Caller[]): void {
    if (this.listeners.deliver(incoming)) return;
    if (incoming.message.method !== "notifications/message") return;
    const calls = callsOfChild();
    const level = (incoming.message.params as { level?: unknown } | undefined)?.level;
    if (calls.length === 1 && logWanted(level, calls[0]!.logLevel)) calls[0]!.progress(incoming);
  }
}
