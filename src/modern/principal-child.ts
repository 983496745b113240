// One principal's (grant's) child as its modern callers share it, whichever era it speaks: the child
// channel (ids and progress tokens rewritten), activity, retirement and close; how it is spoken to is its era's subclass.
import { ChildChannel, type ChildRequest } from "../bridge/child-channel.ts";
import type { IncomingMessage, JsonRpcMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import type { Logger } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import type { ModernCallSettings } from "./modern-call.ts";
import type { ListenerCount } from "./subscriptions.ts";

export interface PrincipalChildOptions extends ModernCallSettings {
  logger: Logger;
  /** The listen streams open over every grant, which MAX_LISTENERS bounds. */
  listenerCount: ListenerCount;
  /** How long a caller has to retry after an input_required result (a modern child's requestState expires then). */
  continuationDeadlineMs: number;
  /** The child exited without being asked to; its callers have had their errors. */
  onExit(exit: ChildExit): void;
}

/** Who waits on a call: a caller's stream, or the broker's own request. */
export interface Caller {
  progress(incoming: IncomingMessage): void;
  answered(incoming: IncomingMessage): void;
  failed(code: number, message: string): void;
  cancelled(): void;
  /** The request's _meta logLevel: what notifications/message it wants (undefined: none). */
  readonly logLevel: unknown;
}

/** How a caller's request is sent: `sse` whether its answer may stream; `given` answers (by key) its caller already gave to a run of it elsewhere. */
export interface CallOptions {
  sse?: boolean;
  given?: Record<string, unknown>;
}

/** `C`: what the era's subclass knows of each call on its child. */
export abstract class PrincipalChild<C extends Caller = Caller> {
  protected readonly channel: ChildChannel<C>;
  private lastActive: number;
  private retiring = false;
  /** Told once no call runs on it (see callsSettled). */
  private settledWaiters: (() => void)[] = [];

  constructor(
    child: ChildProcess,
    protected readonly options: PrincipalChildOptions,
  ) {
    this.lastActive = options.timers.now();
    this.channel = new ChildChannel<C>(child, { ...options, multiplexed: true }, {
      progress: (caller, incoming) => caller.progress(incoming),
      answered: (caller, incoming) => this.over(() => caller.answered(incoming)),
      failed: (caller, code, message) => this.over(() => caller.failed(code, message)),
      cancelledByClient: (caller) => this.over(() => caller.cancelled()),
      childRequest: (request, callsOfChild) => this.childRequest(request, callsOfChild),
      childNotification: (incoming, callsOfChild) => this.childNotification(incoming, callsOfChild),
      childExited: (exit) => {
        this.endListeners("the MCP server exited");
        options.onExit(exit);
        this.callsChanged();
      },
    });
  }

  /**
   * Greets the child as its era wants (initialize, or server/discover) before it takes calls. Resolves
   * with null, or with why it could not (the child's error, its exit, or no answer within `timeoutMs`, which closes it).
   */
  abstract start(timeoutMs: number): Promise<string | null>;

  /** The result of the broker's answer to server/discover: the broker's versions, the child's capabilities, instructions and serverInfo. */
  abstract get discoverResult(): Record<string, unknown>;

  /**
   * Sends a caller's request; the stream yields its progress and the log notifications it asked for —
   * unless the caller takes no SSE (`sse` false) — then its answer. Closing the stream cancels the call.
   */
  abstract call(incoming: IncomingMessage, options?: CallOptions): MessageStream;

  /**
   * A subscriptions/listen: its stream starts with the acknowledgement, then carries the notifications its
   * filter asks for until the caller closes it or the child goes. Throws McpRefusal: 400 for a malformed filter, 429 past a bound.
   */
  abstract listen(incoming: IncomingMessage): MessageStream;

  /** How many listen streams are open on it: while any is, the child is not idle (its listeners wait for its news). */
  abstract get listening(): number;

  /**
   * Its listen streams move to `next`, the grant's next child (a token rotation), where its era can carry
   * them on; the rest end when it retires, and their callers listen again.
   */
  abstract handOverListeners(next: PrincipalChild): void;

  /** Its listen streams end (their callers listen again, on the next child). */
  protected abstract endListeners(reason: string): void;

  /**
   * How many callers' calls run on it: in flight and not waiting for their caller's MRTR retry (such a call
   * runs again only if that retry comes back here); listen streams and the broker's own requests are not calls.
   */
  abstract get runningCalls(): number;

  /** The child's own request (the channel has rewritten nothing in it). */
  protected abstract childRequest(request: ChildRequest, callsOfChild: () => C[]): void;

  /** A notification of the child's own that names no call by progress token. */
  protected abstract childNotification(incoming: IncomingMessage, callsOfChild: () => C[]): void;

  get inFlight(): number {
    return this.channel.inFlight;
  }

  /**
   * Resolves once no caller's call runs on it (at once when none does): a stopping broker waits for this,
   * within its grace, before it stops the child. A call parked for its caller's retry does not hold it up.
   */
  callsSettled(): Promise<void> {
    if (this.runningCalls === 0) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  /** By when at the latest the first call now in flight is over (its timeout); null when none is. */
  get earliestRequestDeadline(): number | null {
    return this.channel.earliestRequestDeadline;
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

  /** No new calls; its listen streams end, and it stops once the calls in flight are over (now, if none is). */
  retire(reason: string): void {
    this.retiring = true;
    this.endListeners(reason);
    if (this.channel.inFlight === 0) void this.close(reason);
  }

  /** Every call in flight fails now; resolves when the child has exited. */
  close(reason: string): Promise<void> {
    this.retiring = true;
    this.endListeners(reason);
    return this.channel.close(reason);
  }

  /** Something happened on it (a call, a listener going): the idle clock starts over. */
  protected touch(): void {
    this.lastActive = this.options.timers.now();
  }

  /** A call is over: it counts as activity, and a retiring child with nothing left in flight stops. */
  protected over(report: () => void): void {
    this.touch();
    report();
    // Not while the channel closes (its failing of every call lands here too).
    if (this.retiring && this.channel.inFlight === 0 && this.channel.closed === null) void this.close("the child retired");
    this.callsChanged();
  }

  /** A call ended or went to wait for its caller's retry: those waiting for no call to run are told once none does. */
  protected callsChanged(): void {
    if (this.runningCalls === 0) for (const settled of this.settledWaiters.splice(0)) settled();
  }

  /**
   * The broker's own request to the child (its greeting): resolves with the child's answer, or with why
   * none came (its exit, or `timeoutMs` passing, which closes the child). `asCall` makes the era's call of it.
   */
  protected brokerRequest(method: string, params: Record<string, unknown>, timeoutMs: number, asCall: (caller: Caller) => C): Promise<JsonRpcMessage | string> {
    const request = { jsonrpc: "2.0", id: 0, method, params };
    return new Promise((resolve) => {
      const timer = this.options.timers.setTimeout(() => {
        resolve(`the MCP server did not answer ${method} within ${Math.round(timeoutMs / 1000)} s`);
        void this.close(`the MCP server did not answer ${method} in time`);
      }, timeoutMs);
      const settle = (outcome: JsonRpcMessage | string) => {
        this.options.timers.clearTimeout(timer);
        resolve(outcome);
      };
      const caller: Caller = {
        logLevel: undefined,
        progress: () => {},
        answered: (incoming) => settle(incoming.message),
        failed: (_code, message) => settle(message),
        cancelled: () => settle(`${method} was cancelled`),
      };
      this.channel.call({ raw: JSON.stringify(request), message: request }, asCall(caller));
    });
  }
}
