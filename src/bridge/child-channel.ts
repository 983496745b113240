// The broker's side toward MCP children: calls written to the current child and answers matched back
// by id (timeouts, cancellation; ids and progress tokens rewritten when callers share it), the broker's own requests, and the move to a new child.
import type { Logger } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import { reportChildFailure } from "../supervisor/failure-report.ts";
import type { TimerHandle, Timers } from "../supervisor/timers.ts";
import { ChildLink } from "./child-link.ts";
import {
  ErrorCode,
  errorResponse,
  idKey,
  isJsonRpcId,
  notification,
  withId,
  type IncomingMessage,
  type JsonRpcId,
  type JsonRpcMessage,
  type MessageKind,
} from "./jsonrpc.ts";
import { Once } from "../once.ts";

/** Where a 2026-07-28 notification names the subscriptions/listen it belongs to. */
export const SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId";

/** The new child could not take over; the old one keeps serving. */
export class RotationError extends Error {
  override readonly name = "RotationError";
}

export interface ChildChannelOptions {
  logger: Logger;
  timers: Timers;
  requestTimeoutMs: number;
  maxMessageBytes: number;
  /**
   * Many callers share the child (a modern principal's): each call goes out under an id and progress
   * token of the broker's, mapped back on the way out, so two callers' equal ids never meet.
   */
  multiplexed?: boolean;
}

/** A child's own request (elicitation, sampling, roots) for whoever can put it before a client. */
export interface ChildRequest {
  readonly method: string;
  /** What the child asks, as it sent it (for a client that gets the request in another form, e.g. MRTR). */
  readonly params: unknown;
  /**
   * The child now waits for the client's answer (see ChildChannel.respond); returns the message for
   * the client, its id rewritten when another child's request still waiting has the same one.
   */
  forward(): IncomingMessage;
  /** Answers the child at once with a JSON-RPC error, so it does not wait out its own timeout. */
  refuse(code: number, message: string): void;
  /** Answers the child at once with a result (the broker's own answer, e.g. to ping). */
  reply(result: unknown): void;
}

/**
 * What the channel reports. `C` is what the caller gave with each call (`call`); every call ends in
 * exactly one of answered, failed or cancelledByClient, unless its caller cancels it (then none).
 */
export interface ChannelEvents<C> {
  /** A notifications/progress carrying the call's progress token. */
  progress(call: C, incoming: IncomingMessage): void;
  answered(call: C, incoming: IncomingMessage): void;
  /** No answer will come: the broker's error instead (timeout, child gone, duplicate id, stdin full). */
  failed(call: C, code: number, message: string): void;
  /** The client's notifications/cancelled for it reached the child; no answer is expected. */
  cancelledByClient(call: C): void;
  /** `callsOfChild`: the calls in flight on the child that sent it, which it most likely belongs to. */
  childRequest(request: ChildRequest, callsOfChild: () => C[]): void;
  /** A notification of the child's own (progress goes to its call instead). */
  childNotification(incoming: IncomingMessage, callsOfChild: () => C[]): void;
  /** The current child exited without being asked to: the channel is closed, `why` says so. */
  childExited(exit: ChildExit, why: string): void;
}

/** A call as its caller holds it, to cancel it. */
export interface ChannelCall {
  readonly id: JsonRpcId;
  readonly method: string;
}

interface PendingCall<C> extends ChannelCall {
  /** The id the child knows the call by: the caller's own, or the broker's when multiplexed. */
  childId: JsonRpcId;
  key: string;
  link: ChildLink;
  context: C;
  progressKey: string | null;
  /** The caller's progress token, when the child was given the broker's instead. */
  callerToken: JsonRpcId | null;
  /** Null for a call that stays open until someone ends it (a 2026-07-28 subscriptions/listen). */
  timer: TimerHandle | null;
  /** When the call times out if nothing answers it first (Infinity: never). */
  deadline: number;
}

/** A child's request to the client that the client has yet to answer. */
interface PendingServerRequest {
  link: ChildLink;
  originalId: JsonRpcId;
}

interface InternalWaiter {
  link: ChildLink;
  resolve(message: JsonRpcMessage): void;
  reject(error: Error): void;
}

export class ChildChannel<C> {
  private current: ChildLink;
  /** Old children finishing their in-flight calls after a rotation, and new ones not yet switched to. */
  private readonly otherLinks = new Set<ChildLink>();
  private readonly draining = new Set<ChildLink>();
  private readonly pending = new Map<string, PendingCall<C>>();
  private readonly progressOwners = new Map<string, PendingCall<C>>();
  private readonly serverRequests = new Map<string, PendingServerRequest>();
  private readonly internal = new Map<string, InternalWaiter>();
  private nextBrokerId = 1;
  /** Told once no call is in flight (see callsSettled). */
  private settledWaiters: (() => void)[] = [];
  private closedReason: string | null = null;
  private closing = false;
  private readonly closingOnce = new Once();
  /** What a new child is told on rotation, so it starts where the old one was. */
  private recordedInitialize: IncomingMessage | null = null;
  private recordedInitialized: IncomingMessage | null = null;

  constructor(
    child: ChildProcess,
    private readonly options: ChildChannelOptions,
    private readonly events: ChannelEvents<C>,
  ) {
    this.current = this.link(child);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** What the caller gave with each call in flight, on every child. */
  get calls(): C[] {
    return [...this.pending.values()].map((pending) => pending.context);
  }

  /** Resolves once no call is in flight: at once when none is, else when the last one is answered, fails or times out. */
  callsSettled(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  /** By when at the latest the first call now in flight is over (its timeout); null when none is. */
  get earliestRequestDeadline(): number | null {
    let earliest: number | null = null;
    for (const pending of this.pending.values()) if (earliest === null || pending.deadline < earliest) earliest = pending.deadline;
    return earliest;
  }

  /** Null while the current child is serving; otherwise why not. */
  get closed(): string | null {
    return this.closedReason;
  }

  get childPid(): number {
    return this.current.child.pid;
  }

  /**
   * Writes a request to the current child; what the child sends for it is reported with `context`.
   * A closed channel, an id already in flight or a child not taking input fail it at once. An `untimed`
   * call has no timeout: it is open until answered or cancelled.
   */
  call(incoming: IncomingMessage, context: C, options: { untimed?: boolean } = {}): ChannelCall {
    const id = incoming.message.id as JsonRpcId;
    const method = String(incoming.message.method);
    if (this.closedReason !== null) {
      this.events.failed(context, ErrorCode.ConnectionClosed, this.closedReason);
      return { id, method };
    }
    const multiplexed = this.options.multiplexed === true;
    const childId = multiplexed ? `fmb-${this.nextBrokerId++}` : id;
    const key = idKey(childId);
    if (this.pending.has(key)) {
      this.events.failed(context, ErrorCode.InvalidRequest, `request id ${JSON.stringify(id)} is already in flight in this session`);
      return { id, method };
    }
    const callerToken = progressTokenOf(incoming.message);
    const token = multiplexed && callerToken !== null ? `${childId}-progress` : callerToken;
    const pending: PendingCall<C> = {
      id,
      childId,
      key,
      method,
      link: this.current,
      context,
      progressKey: token === null ? null : idKey(token),
      callerToken: multiplexed ? callerToken : null,
      timer: options.untimed === true ? null : this.options.timers.setTimeout(() => this.timeout(pending), this.options.requestTimeoutMs),
      deadline: options.untimed === true ? Infinity : this.options.timers.now() + this.options.requestTimeoutMs,
    };
    this.pending.set(key, pending);
    if (pending.progressKey !== null) this.progressOwners.set(pending.progressKey, pending);
    if (method === "initialize") this.recordedInitialize = incoming;
    const written = pending.link.write(multiplexed ? rewritten(incoming.message, childId, token) : incoming.raw);
    if (written === "closed") this.fail(pending, ErrorCode.ConnectionClosed, "the MCP server is not running");
    else if (written === "full") this.fail(pending, ErrorCode.ConnectionClosed, `the MCP server is not reading its input: over ${pending.link.maxStdinBytes} bytes wait for it`);
    return pending;
  }

  /**
   * The caller no longer wants the answer (its client went away or stopped reading): the child is told,
   * except for initialize, which the spec forbids cancelling, and the call is over. Reports nothing.
   */
  cancel(call: ChannelCall, reason: string): void {
    const key = (call as Partial<PendingCall<C>>).key;
    const pending = key === undefined ? undefined : this.pending.get(key);
    if (pending !== call) return;
    if (pending.method !== "initialize") pending.link.write(notification("notifications/cancelled", { requestId: pending.childId, reason }));
    this.settle(pending);
  }

  /**
   * The call's timeout starts over, `ms` from now: while a modern caller is asked for input (MRTR) the
   * child is not the one keeping the call waiting.
   */
  restartTimeout(call: ChannelCall, ms: number): void {
    const key = (call as Partial<PendingCall<C>>).key;
    const pending = key === undefined ? undefined : this.pending.get(key);
    if (pending !== call) return;
    if (pending.timer !== null) this.options.timers.clearTimeout(pending.timer);
    pending.timer = this.options.timers.setTimeout(() => this.timeout(pending), ms);
    pending.deadline = this.options.timers.now() + ms;
  }

  /** A client notification for the child; a notifications/cancelled also ends the call it names. */
  notify(incoming: IncomingMessage): void {
    if (this.closedReason !== null) return;
    const message = incoming.message;
    if (message.method === "notifications/cancelled") {
      const requestId = (message.params as { requestId?: unknown } | undefined)?.requestId;
      const cancelled = isJsonRpcId(requestId) ? this.pending.get(idKey(requestId)) : undefined;
      if (cancelled !== undefined) {
        cancelled.link.write(incoming.raw);
        // The child will not answer a cancelled request, and the client expects no answer.
        this.settle(cancelled);
        this.events.cancelledByClient(cancelled.context);
        return;
      }
    }
    if (message.method === "notifications/initialized") this.recordedInitialized = incoming;
    this.current.write(incoming.raw);
  }

  /** The client's answer to a child's request (e.g. an elicitation), to the child that asked, under its own id. */
  respond(incoming: IncomingMessage): void {
    if (this.closedReason !== null) return;
    const message = incoming.message;
    const key = isJsonRpcId(message.id) ? idKey(message.id) : null;
    const asked = key === null ? undefined : this.serverRequests.get(key);
    if (asked === undefined) {
      this.options.logger.warn("client answered a request no child is waiting on; dropped", { id: String(message.id) });
      return;
    }
    this.serverRequests.delete(key!);
    asked.link.write(asked.originalId === message.id ? incoming.raw : withId(message, asked.originalId));
  }

  /**
   * Moves to a new child (token rotation): replays the recorded initialize under a broker id whose
   * answer is swallowed, then notifications/initialized, then sends new calls there while the old child
   * finishes what it has in flight. Throws RotationError, in which case the new child is stopped and
   * the old one goes on.
   */
  async replaceChild(child: ChildProcess, initializeTimeoutMs: number): Promise<void> {
    const initialize = this.recordedInitialize;
    if (this.closedReason !== null || initialize === null) {
      await child.stop();
      throw new RotationError(this.closedReason ?? "the session has not been initialized");
    }
    const link = this.link(child);
    this.otherLinks.add(link);
    const id = `fmb-rotate-${this.nextBrokerId++}`;
    try {
      const answer = await this.internalRequest(link, withId(initialize.message, id), id, initializeTimeoutMs);
      if ("error" in answer) throw new RotationError(`the new MCP server refused initialize: ${JSON.stringify(answer.error)}`);
      if (this.closedReason !== null) throw new RotationError(this.closedReason);
    } catch (error) {
      this.otherLinks.delete(link);
      await child.stop();
      throw error instanceof RotationError ? error : new RotationError(error instanceof Error ? error.message : String(error));
    }
    if (this.recordedInitialized !== null) link.write(this.recordedInitialized.raw);
    const old = this.current;
    this.current = link;
    this.otherLinks.delete(link);
    this.otherLinks.add(old);
    this.draining.add(old);
    this.stopIfDrained(old);
  }

  /** Every call in flight fails now (synchronously), then every child is stopped; resolves when all have exited. */
  close(reason: string): Promise<void> {
    // Failing the calls in flight reaches handlers that may close again: they get this same close.
    return this.closingOnce.run(() => this.shutDown(reason));
  }

  private async shutDown(reason: string): Promise<void> {
    this.closing = true;
    if (this.closedReason === null) this.closedReason = reason;
    this.failAll(this.current, reason, true);
    const links = [this.current, ...this.otherLinks];
    await Promise.all(links.map((link) => link.child.stop()));
  }

  private link(child: ChildProcess): ChildLink {
    return new ChildLink(child, this.options.logger, this.options.maxMessageBytes, {
      onMessage: (link, incoming, kind) => this.fromChild(link, incoming, kind),
      onExit: (link, exit) => this.childExited(link, exit),
    });
  }

  private fromChild(link: ChildLink, incoming: IncomingMessage, kind: MessageKind): void {
    const message = incoming.message;
    if (kind === "response") {
      if (!isJsonRpcId(message.id)) {
        this.options.logger.warn("child sent an error without a request id", { error: JSON.stringify(message.error ?? null) });
        return;
      }
      const key = idKey(message.id);
      const waiter = this.internal.get(key);
      if (waiter !== undefined && waiter.link === link) {
        this.internal.delete(key);
        waiter.resolve(message);
        return;
      }
      const pending = this.pending.get(key);
      if (pending === undefined || pending.link !== link) {
        this.options.logger.debug("child answered a request nobody waits for (timed out or cancelled)", { id: String(message.id) });
        return;
      }
      this.settle(pending);
      this.events.answered(pending.context, pending.childId === pending.id ? incoming : reparsed(withId(message, pending.id)));
      return;
    }
    if (kind === "notification" && message.method === "notifications/progress") {
      const token = (message.params as { progressToken?: unknown } | undefined)?.progressToken;
      const owner = isJsonRpcId(token) ? this.progressOwners.get(idKey(token)) : undefined;
      if (owner === undefined || owner.link !== link) this.options.logger.debug("progress for no request in flight; dropped");
      else if (owner.callerToken === null) this.events.progress(owner.context, incoming);
      else this.events.progress(owner.context, reparsed(JSON.stringify({ ...message, params: { ...(message.params as object), progressToken: owner.callerToken } })));
      return;
    }
    const subscriber = kind === "notification" ? this.subscriberOf(link, message) : undefined;
    if (subscriber !== undefined) {
      const params = message.params as Record<string, unknown>;
      const meta = { ...(params._meta as object), [SUBSCRIPTION_ID]: subscriber.id };
      this.events.progress(subscriber.context, reparsed(JSON.stringify({ ...message, params: { ...params, _meta: meta } })));
      return;
    }
    const callsOfChild = () => this.callsOf(link);
    if (kind === "request") this.events.childRequest(this.childRequest(link, incoming), callsOfChild);
    else this.events.childNotification(incoming, callsOfChild);
  }

  private childRequest(link: ChildLink, incoming: IncomingMessage): ChildRequest {
    const message = incoming.message;
    const id = message.id as JsonRpcId;
    return {
      method: String(message.method),
      params: message.params,
      forward: () => {
        const clash = this.serverRequests.get(idKey(id));
        // Two children (old and new, during a rotation) may pick the same id; the client must not see a clash.
        if (clash !== undefined && clash.link !== link) {
          const clientId = `fmb-${this.nextBrokerId++}-${String(id)}`;
          this.serverRequests.set(idKey(clientId), { link, originalId: id });
          const raw = withId(message, clientId);
          return { raw, message: JSON.parse(raw) as JsonRpcMessage };
        }
        this.serverRequests.set(idKey(id), { link, originalId: id });
        return incoming;
      },
      refuse: (code, text) => void link.write(errorResponse(id, code, text)),
      reply: (result) => void link.write(JSON.stringify({ jsonrpc: "2.0", id, result })),
    };
  }

  /**
   * The multiplexed call a 2026-07-28 child's notification names by its subscription id (the broker's
   * id of a subscriptions/listen), reported with the caller's id in its place.
   */
  private subscriberOf(link: ChildLink, message: JsonRpcMessage): PendingCall<C> | undefined {
    if (this.options.multiplexed !== true) return undefined;
    const meta = (message.params as { _meta?: Record<string, unknown> } | undefined)?._meta;
    const id = meta?.[SUBSCRIPTION_ID];
    const pending = isJsonRpcId(id) ? this.pending.get(idKey(id)) : undefined;
    return pending !== undefined && pending.link === link ? pending : undefined;
  }

  private callsOf(link: ChildLink): C[] {
    const calls: C[] = [];
    for (const pending of this.pending.values()) if (pending.link === link) calls.push(pending.context);
    return calls;
  }

  private childExited(link: ChildLink, exit: ChildExit): void {
    // Reported (and logged) only where someone is told: a child the broker stopped had its callers answered first.
    const waiting = [...this.pending.values(), ...this.internal.values()].some((waiter) => waiter.link === link);
    const told = waiting || (link === this.current && !this.closing);
    const why = told ? reportChildFailure(this.options.logger, "the MCP server exited", exit.lastStderrLine) : "the MCP server exited";
    this.failAll(link, why, false);
    for (const [key, asked] of this.serverRequests) if (asked.link === link) this.serverRequests.delete(key);
    this.draining.delete(link);
    this.otherLinks.delete(link);
    if (link !== this.current || this.closing) return;
    this.closedReason = why;
    this.events.childExited(exit, why);
  }

  /** Fails the callers waiting on `link` (or on every child, with `everyLink`) at once. */
  private failAll(link: ChildLink, why: string, everyLink: boolean): void {
    for (const pending of [...this.pending.values()]) {
      if (everyLink || pending.link === link) this.fail(pending, ErrorCode.ConnectionClosed, why);
    }
    for (const [key, waiter] of [...this.internal]) {
      if (everyLink || waiter.link === link) {
        this.internal.delete(key);
        waiter.reject(new RotationError(why));
      }
    }
  }

  private timeout(pending: PendingCall<C>): void {
    if (this.pending.get(pending.key) !== pending) return;
    const seconds = Math.round(this.options.requestTimeoutMs / 1000);
    pending.link.write(notification("notifications/cancelled", { requestId: pending.childId, reason: "request timed out" }));
    this.fail(pending, ErrorCode.RequestTimeout, `the MCP server did not answer within ${seconds} s`);
  }

  private fail(pending: PendingCall<C>, code: number, message: string): void {
    this.settle(pending);
    this.events.failed(pending.context, code, message);
  }

  /** The call is no longer in flight; an old child with nothing left in flight is stopped. */
  private settle(pending: PendingCall<C>): void {
    if (this.pending.get(pending.key) !== pending) return;
    if (pending.timer !== null) this.options.timers.clearTimeout(pending.timer);
    this.pending.delete(pending.key);
    if (this.pending.size === 0) for (const settled of this.settledWaiters.splice(0)) settled();
    if (pending.progressKey !== null && this.progressOwners.get(pending.progressKey) === pending) this.progressOwners.delete(pending.progressKey);
    this.stopIfDrained(pending.link);
  }

  private stopIfDrained(link: ChildLink): void {
    if (!this.draining.has(link)) return;
    for (const pending of this.pending.values()) if (pending.link === link) return;
    this.draining.delete(link);
    void link.child.stop();
  }

  private internalRequest(link: ChildLink, data: string, id: string, timeoutMs: number): Promise<JsonRpcMessage> {
    return new Promise((resolve, reject) => {
      const key = idKey(id);
      const timer = this.options.timers.setTimeout(() => {
        this.internal.delete(key);
        reject(new RotationError(`the new MCP server did not answer initialize within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      const done = () => this.options.timers.clearTimeout(timer);
      this.internal.set(key, {
        link,
        resolve: (message) => (done(), resolve(message)),
        reject: (error) => (done(), reject(error)),
      });
      if (link.write(data) !== "written") {
        this.internal.delete(key);
        done();
        reject(new RotationError("the new MCP server is not running"));
      }
    });
  }
}

function reparsed(raw: string): IncomingMessage {
  return { raw, message: JSON.parse(raw) as JsonRpcMessage };
}

/** A multiplexed call as the child gets it: under the broker's id and progress token. */
function rewritten(message: JsonRpcMessage, childId: JsonRpcId, token: JsonRpcId | null): string {
  if (token === null) return withId(message, childId);
  const params = message.params as Record<string, unknown>;
  return JSON.stringify({ ...message, id: childId, params: { ...params, _meta: { ...(params._meta as object), progressToken: token } } });
}

function progressTokenOf(message: JsonRpcMessage): JsonRpcId | null {
  const params = message.params;
  if (params === null || typeof params !== "object") return null;
  const meta = (params as { _meta?: unknown })._meta;
  if (meta === null || typeof meta !== "object") return null;
  const token = (meta as { progressToken?: unknown }).progressToken;
  return isJsonRpcId(token) ? token : null;
}
