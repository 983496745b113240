// One session's JSON-RPC traffic between HTTP and its children: requests out and answers back by id,
// server messages to the right SSE stream, replay by event id, and the hand-over on token rotation.
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
import { MessageStream, type OutboundEvent } from "./message-stream.ts";
import { formatEventId, parseEventId, ReplayBuffer, STANDALONE_STREAM, type EventPosition } from "./replay.ts";

/** A message over maxMessageBytes from the client: the route answers 413. */
export class MessageTooLargeError extends Error {
  override readonly name = "MessageTooLargeError";
  constructor(
    readonly bytes: number,
    readonly limit: number,
  ) {
    super(`message of ${bytes} bytes is over the limit of ${limit} bytes`);
  }
}

/** A second standalone GET stream while one is open: the route answers 409. */
export class StreamConflictError extends Error {
  override readonly name = "StreamConflictError";
  constructor() {
    super("this session already has an open standalone SSE stream");
  }
}

/** A Last-Event-ID this broker never issued: the route answers 400. */
export class InvalidEventIdError extends Error {
  override readonly name = "InvalidEventIdError";
  constructor(readonly lastEventId: string) {
    super("Last-Event-ID is not an event id of this session");
  }
}

/** The new child could not take over; the old one keeps serving. */
export class RotationError extends Error {
  override readonly name = "RotationError";
}

export interface BridgeOptions {
  logger: Logger;
  timers: Timers;
  requestTimeoutMs: number;
  maxMessageBytes: number;
  replayMaxEvents?: number;
  replayMaxBytes?: number;
  /** The session's current child exited without being asked to: the session is over. */
  onChildExit?: (exit: ChildExit) => void;
}

interface PendingRequest {
  id: JsonRpcId;
  key: string;
  method: string;
  link: ChildLink;
  stream: MessageStream;
  progressKey: string | null;
  timer: TimerHandle;
  /** When the request times out if nothing answers it first. */
  deadline: number;
  /** The client takes a JSON answer: a response that comes first goes out without an event id. */
  jsonAnswer: boolean;
  /** The client takes SSE, so this request's stream can carry the child's messages to the client. */
  carriesServerMessages: boolean;
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

type ReplayEvent = OutboundEvent & EventPosition;

export class Bridge {
  private current: ChildLink;
  /** Old children finishing their in-flight requests after a rotation, and new ones not yet switched to. */
  private readonly otherLinks = new Set<ChildLink>();
  private readonly draining = new Set<ChildLink>();
  private readonly pending = new Map<string, PendingRequest>();
  private readonly pendingByStream = new Map<MessageStream, PendingRequest>();
  private readonly progress = new Map<string, PendingRequest>();
  private readonly serverRequests = new Map<string, PendingServerRequest>();
  private readonly internal = new Map<string, InternalWaiter>();
  private readonly liveStreams = new Set<MessageStream>();
  private readonly replay: ReplayBuffer<ReplayEvent>;
  private readonly replayMaxEvents: number;
  private readonly replayMaxBytes: number;
  private standalone: MessageStream | null = null;
  /**
   * Children's notifications waiting for a standalone stream to open (their requests are never kept:
   * see refuseUndeliverable), bounded in number and bytes like the replay buffer.
   */
  private undelivered: ReplayBuffer<ReplayEvent>;
  private nextStreamNo = 1;
  private nextSeq = 1;
  private nextBrokerId = 1;
  private closedReason: string | null = null;
  private closing = false;
  private closingDone: Promise<void> | null = null;
  private recordedInitialize: IncomingMessage | null = null;
  private recordedInitialized: IncomingMessage | null = null;
  private lastActive: number;

  constructor(
    child: ChildProcess,
    private readonly options: BridgeOptions,
  ) {
    this.replayMaxEvents = options.replayMaxEvents ?? 256;
    this.replayMaxBytes = options.replayMaxBytes ?? 1024 * 1024;
    this.replay = new ReplayBuffer(this.replayMaxEvents, this.replayMaxBytes);
    this.undelivered = new ReplayBuffer(this.replayMaxEvents, this.replayMaxBytes);
    this.lastActive = options.timers.now();
    this.current = this.link(child);
  }

  /** Streams a client is connected to (request streams and the standalone one). */
  get activeStreams(): number {
    return this.liveStreams.size;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** By when at the latest the first request now in flight is over (its timeout); null when none is. */
  get earliestRequestDeadline(): number | null {
    let earliest: number | null = null;
    for (const pending of this.pending.values()) if (earliest === null || pending.deadline < earliest) earliest = pending.deadline;
    return earliest;
  }

  /** When a message last passed or a stream last opened or closed. */
  get lastActivity(): number {
    return this.lastActive;
  }

  /** Null while the session's child is serving; otherwise why not. */
  get closed(): string | null {
    return this.closedReason;
  }

  get childPid(): number {
    return this.current.child.pid;
  }

  /**
   * Forwards a client request; its stream yields what the child sends for it and ends with the
   * response (or a broker error: duplicate id, timeout, child gone). Throws MessageTooLargeError.
   * With `jsonAnswer`, a response that is the first thing on the stream goes out as plain JSON, so
   * nobody can ask for it again by event id and the replay buffer does not keep it. Without `sse`
   * (the client takes only JSON), and for initialize, the stream carries nothing but the answer.
   */
  request(incoming: IncomingMessage, options: { jsonAnswer?: boolean; sse?: boolean } = {}): MessageStream {
    this.checkSize(incoming.raw);
    this.touch();
    const id = incoming.message.id as JsonRpcId;
    const stream = this.newStream(this.nextStreamNo++);
    if (this.closedReason !== null) {
      this.endWithError(stream, id, ErrorCode.ConnectionClosed, this.closedReason);
      return stream;
    }
    const key = idKey(id);
    if (this.pending.has(key)) {
      this.endWithError(stream, id, ErrorCode.InvalidRequest, `request id ${JSON.stringify(id)} is already in flight in this session`);
      return stream;
    }
    const method = String(incoming.message.method);
    const token = progressTokenOf(incoming.message);
    const pending: PendingRequest = {
      id,
      key,
      method,
      link: this.current,
      stream,
      progressKey: token === null ? null : idKey(token),
      timer: this.options.timers.setTimeout(() => this.timeout(pending), this.options.requestTimeoutMs),
      deadline: this.options.timers.now() + this.options.requestTimeoutMs,
      jsonAnswer: options.jsonAnswer ?? false,
      // The registry collects initialize's stream whole before the client sees any of it, so a
      // request of the child's there would only be seen after the answer the child holds back for it.
      carriesServerMessages: method !== "initialize" && (options.sse ?? true),
    };
    this.pending.set(key, pending);
    this.pendingByStream.set(stream, pending);
    if (pending.progressKey !== null) this.progress.set(pending.progressKey, pending);
    if (method === "initialize") this.recordedInitialize = incoming;
    const written = pending.link.write(incoming.raw);
    if (written === "closed") this.fail(pending, ErrorCode.ConnectionClosed, "the MCP server is not running");
    else if (written === "full") this.fail(pending, ErrorCode.ConnectionClosed, `the MCP server is not reading its input: over ${pending.link.maxStdinBytes} bytes wait for it`);
    return stream;
  }

  /** Forwards a client notification or response (e.g. an elicitation answer). Throws MessageTooLargeError. */
  send(incoming: IncomingMessage, kind: "notification" | "response"): void {
    this.checkSize(incoming.raw);
    this.touch();
    if (this.closedReason !== null) return;
    const message = incoming.message;
    if (kind === "response") {
      const key = isJsonRpcId(message.id) ? idKey(message.id) : null;
      const asked = key === null ? undefined : this.serverRequests.get(key);
      if (asked === undefined) {
        this.options.logger.warn("client answered a request no child is waiting on; dropped", { id: String(message.id) });
        return;
      }
      this.serverRequests.delete(key!);
      asked.link.write(asked.originalId === message.id ? incoming.raw : withId(message, asked.originalId));
      return;
    }
    if (message.method === "notifications/cancelled") {
      const requestId = (message.params as { requestId?: unknown } | undefined)?.requestId;
      const cancelled = isJsonRpcId(requestId) ? this.pending.get(idKey(requestId)) : undefined;
      if (cancelled !== undefined) {
        cancelled.link.write(incoming.raw);
        // The child will not answer a cancelled request, and the client expects no answer.
        this.settle(cancelled);
        this.endStream(cancelled.stream);
        return;
      }
    }
    if (message.method === "notifications/initialized") this.recordedInitialized = incoming;
    this.current.write(incoming.raw);
  }

  /** The standalone GET stream; anything buffered for it while it was closed comes first. Throws StreamConflictError. */
  openStandalone(): MessageStream {
    if (this.standalone?.isOpen) throw new StreamConflictError();
    const stream = this.newStream(STANDALONE_STREAM);
    this.standalone = stream;
    if (this.closedReason !== null) {
      this.endStream(stream);
      return stream;
    }
    stream.pushMissed(this.takeUndelivered(0));
    return stream;
  }

  /**
   * GET with Last-Event-ID: what that one stream missed, from the replay buffer. For the standalone
   * stream it then goes on as the standalone stream (replacing a stale one); a request stream ends
   * after the replay. Throws InvalidEventIdError.
   */
  resume(lastEventId: string): MessageStream {
    const position = parseEventId(lastEventId);
    if (position === null || position.stream >= this.nextStreamNo || position.seq >= this.nextSeq) {
      throw new InvalidEventIdError(lastEventId);
    }
    this.touch();
    if (position.stream !== STANDALONE_STREAM) {
      const stream = this.newStream(position.stream);
      stream.pushMissed(this.replay.after(position));
      this.endStream(stream);
      return stream;
    }
    this.standalone?.close("superseded by a resumed stream");
    const stream = this.newStream(STANDALONE_STREAM);
    this.standalone = stream;
    const seen = new Set<string>();
    const missed = [...this.replay.after(position), ...this.takeUndelivered(position.seq)]
      .filter((event) => !seen.has(event.eventId) && seen.add(event.eventId))
      .sort((a, b) => a.seq - b.seq);
    stream.pushMissed(missed);
    if (this.closedReason !== null) this.endStream(stream);
    return stream;
  }

  /**
   * Moves the session to a new child (token rotation): replays the recorded initialize under a
   * broker id whose answer is swallowed, then notifications/initialized, then sends new requests
   * there while the old child finishes what it has in flight. Throws RotationError, in which case
   * the new child is stopped and the old one goes on.
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

  /** Ends the session: every waiting caller gets an error now, every stream ends, every child is stopped. */
  close(reason = "the session has ended"): Promise<void> {
    this.closingDone ??= this.shutDown(reason);
    return this.closingDone;
  }

  private async shutDown(reason: string): Promise<void> {
    this.closing = true;
    if (this.closedReason === null) this.closedReason = reason;
    this.failAll(this.current, reason, true);
    for (const stream of [...this.liveStreams]) this.endStream(stream);
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
      const replayable = !(pending.jsonAnswer && pending.stream.untouched);
      this.emit(pending.stream, incoming.raw, message, kind, "child", replayable);
      this.endStream(pending.stream);
      return;
    }
    if (kind === "notification" && message.method === "notifications/progress") {
      const token = (message.params as { progressToken?: unknown } | undefined)?.progressToken;
      const owner = isJsonRpcId(token) ? this.progress.get(idKey(token)) : undefined;
      if (owner === undefined || owner.link !== link) this.options.logger.debug("progress for no request in flight; dropped");
      else if (owner.carriesServerMessages) this.emit(owner.stream, incoming.raw, message, kind, "child");
      else this.toStandalone(incoming.raw, message, kind);
      return;
    }
    if (kind === "request") {
      const id = message.id as JsonRpcId;
      const target = this.streamFor(link);
      if (target === null) {
        this.refuseUndeliverable(link, id, String(message.method));
        return;
      }
      const clash = this.serverRequests.get(idKey(id));
      // Two children (old and new, during a rotation) may pick the same id; the client must not see a clash.
      if (clash !== undefined && clash.link !== link) {
        const clientId = `fmb-${this.nextBrokerId++}-${String(id)}`;
        this.serverRequests.set(idKey(clientId), { link, originalId: id });
        const data = withId(message, clientId);
        this.emit(target, data, JSON.parse(data) as JsonRpcMessage, kind, "child");
        return;
      }
      this.serverRequests.set(idKey(id), { link, originalId: id });
      this.emit(target, incoming.raw, message, kind, "child");
      return;
    }
    const target = this.streamFor(link);
    if (target !== null) this.emit(target, incoming.raw, message, kind, "child");
    else this.toStandalone(incoming.raw, message, kind);
  }

  /**
   * Where a child's own message can reach the client: the standalone stream if open; else the SSE
   * stream of this child's only request in flight that has one, which is almost surely what it
   * relates to; else nowhere now.
   */
  private streamFor(link: ChildLink): MessageStream | null {
    if (this.standalone?.isOpen) return this.standalone;
    const streaming = this.streamingRequestsOf(link);
    return streaming.length === 1 ? streaming[0]!.stream : null;
  }

  private streamingRequestsOf(link: ChildLink): PendingRequest[] {
    return [...this.pending.values()].filter((pending) => pending.link === link && pending.carriesServerMessages);
  }

  /** A notification with no stream to go on now waits for the standalone stream (bounded). */
  private toStandalone(data: string, message: JsonRpcMessage, kind: MessageKind): void {
    if (this.standalone?.isOpen) {
      this.emit(this.standalone, data, message, kind, "child");
      return;
    }
    this.undelivered.add(this.record(STANDALONE_STREAM, data, message, kind, "child"));
  }

  /** What waited for the standalone stream after `seq`; from now on nothing waits. */
  private takeUndelivered(seq: number): ReplayEvent[] {
    const waiting = this.undelivered.after({ stream: STANDALONE_STREAM, seq });
    this.undelivered = new ReplayBuffer(this.replayMaxEvents, this.replayMaxBytes);
    return waiting;
  }

  /**
   * A child's request the client cannot be sent now is answered at once, so the child does not wait
   * out its own timeout for an answer that cannot come.
   */
  private refuseUndeliverable(link: ChildLink, id: JsonRpcId, method: string): void {
    const streaming = this.streamingRequestsOf(link).length;
    const why =
      streaming === 0
        ? "the client has no GET stream open and no request in flight whose stream can carry it"
        : `the client has no GET stream open and ${streaming} requests in flight as SSE, so none is known to be the one this belongs to`;
    this.options.logger.warn("a server request could not be delivered to the client; the MCP server was told", { method, why });
    link.write(errorResponse(id, ErrorCode.Undeliverable, `${method} cannot be delivered: ${why}`));
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
    if (this.standalone !== null) this.endStream(this.standalone);
    this.options.onChildExit?.(exit);
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

  private timeout(pending: PendingRequest): void {
    if (this.pending.get(pending.key) !== pending) return;
    const seconds = Math.round(this.options.requestTimeoutMs / 1000);
    pending.link.write(notification("notifications/cancelled", { requestId: pending.id, reason: "request timed out" }));
    this.fail(pending, ErrorCode.RequestTimeout, `the MCP server did not answer within ${seconds} s`);
  }

  private fail(pending: PendingRequest, code: number, message: string): void {
    this.settle(pending);
    this.endWithError(pending.stream, pending.id, code, message);
  }

  /** The request is no longer in flight; an old child with nothing left in flight is stopped. */
  private settle(pending: PendingRequest): void {
    if (this.pending.get(pending.key) !== pending) return;
    this.options.timers.clearTimeout(pending.timer);
    this.pending.delete(pending.key);
    this.pendingByStream.delete(pending.stream);
    if (pending.progressKey !== null && this.progress.get(pending.progressKey) === pending) this.progress.delete(pending.progressKey);
    this.stopIfDrained(pending.link);
  }

  private stopIfDrained(link: ChildLink): void {
    if (!this.draining.has(link)) return;
    for (const pending of this.pending.values()) if (pending.link === link) return;
    this.draining.delete(link);
    void link.child.stop();
  }

  private streamClosed(stream: MessageStream, reason: string): void {
    this.liveStreams.delete(stream);
    this.touch();
    if (this.standalone === stream) this.standalone = null;
    const pending = this.pendingByStream.get(stream);
    if (pending === undefined) return;
    // Nobody is left to read the answer; the spec forbids cancelling initialize.
    if (pending.method !== "initialize") {
      pending.link.write(notification("notifications/cancelled", { requestId: pending.id, reason }));
    }
    this.settle(pending);
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

  private newStream(streamNo: number): MessageStream {
    const stream = new MessageStream(streamNo, (closed, reason) => this.streamClosed(closed, reason), this.options.maxMessageBytes);
    this.liveStreams.add(stream);
    this.touch();
    return stream;
  }

  private endWithError(stream: MessageStream, id: JsonRpcId | null, code: number, message: string): void {
    const data = errorResponse(id, code, message);
    this.emit(stream, data, JSON.parse(data) as JsonRpcMessage, "response", "broker");
    this.endStream(stream);
  }

  /** Nothing more will be sent on it; it no longer keeps the session from idling. */
  private endStream(stream: MessageStream): void {
    stream.end();
    if (this.liveStreams.delete(stream)) this.touch();
  }

  private emit(stream: MessageStream, data: string, message: JsonRpcMessage, kind: MessageKind, origin: "child" | "broker", replayable = true): void {
    if (!stream.push(this.record(stream.streamNo, data, message, kind, origin, replayable))) this.streamOverflowed(stream, message, kind);
  }

  /** The client stopped reading `stream` and it overflowed: its request fails, or the standalone stream ends (Last-Event-ID resumes it). */
  private streamOverflowed(stream: MessageStream, message: JsonRpcMessage, kind: MessageKind): void {
    const why = `the client did not read its event stream: over ${stream.maxUnreadBytes} bytes waited unread`;
    this.options.logger.warn("client stopped reading an event stream; ended it", { stream: stream.streamNo, limit_bytes: stream.maxUnreadBytes });
    const pending = this.pendingByStream.get(stream);
    if (pending !== undefined) {
      pending.link.write(notification("notifications/cancelled", { requestId: pending.id, reason: why }));
      this.fail(pending, ErrorCode.ConnectionClosed, why);
    } else if (kind === "response" && isJsonRpcId(message.id)) {
      this.endWithError(stream, message.id, ErrorCode.ConnectionClosed, why);
    } else {
      this.endStream(stream);
    }
  }

  private record(
    streamNo: number,
    data: string,
    message: JsonRpcMessage,
    kind: MessageKind,
    origin: "child" | "broker",
    replayable = true,
  ): ReplayEvent {
    const seq = this.nextSeq++;
    const event: ReplayEvent = { eventId: formatEventId({ stream: streamNo, seq }), stream: streamNo, seq, data, message, kind, origin };
    if (replayable) this.replay.add(event);
    return event;
  }

  private checkSize(raw: string): void {
    const bytes = Buffer.byteLength(raw);
    if (bytes > this.options.maxMessageBytes) throw new MessageTooLargeError(bytes, this.options.maxMessageBytes);
  }

  private touch(): void {
    this.lastActive = this.options.timers.now();
  }
}

function progressTokenOf(message: JsonRpcMessage): JsonRpcId | null {
  const params = message.params;
  if (params === null || typeof params !== "object") return null;
  const meta = (params as { _meta?: unknown })._meta;
  if (meta === null || typeof meta !== "object") return null;
  const token = (meta as { progressToken?: unknown }).progressToken;
  return isJsonRpcId(token) ? token : null;
}
