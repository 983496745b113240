// A legacy (2025) MCP session as its client sees it: request streams and the standalone GET stream,
// event ids and replay, where a child's own messages go, and activity; its child is behind a ChildChannel.
import { ChildChannel, type ChannelCall, type ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, errorResponse, isJsonRpcId, type IncomingMessage, type JsonRpcId, type JsonRpcMessage, type MessageKind } from "../bridge/jsonrpc.ts";
import { MessageStream, type OutboundEvent } from "../bridge/message-stream.ts";
import { formatEventId, parseEventId, ReplayBuffer, STANDALONE_STREAM, type EventPosition } from "../bridge/replay.ts";
import type { Logger } from "../log.ts";
import type { ChildExit, ChildProcess } from "../supervisor/child.ts";
import type { Timers } from "../supervisor/timers.ts";
import { InvalidEventIdError, MessageTooLargeError, StreamConflictError } from "./errors.ts";
import { Once } from "../once.ts";

/** Who a session belongs to: the grant, not the access token, so a refreshed token keeps its session. */
export interface SessionIdentity {
  grantId: string;
  forgejoUserId: number;
  clientId: string;
}

export interface LegacySessionOptions {
  id: string;
  binding: SessionIdentity;
  logger: Logger;
  timers: Timers;
  requestTimeoutMs: number;
  maxMessageBytes: number;
  replayMaxEvents?: number;
  replayMaxBytes?: number;
  /** The session's current child exited without being asked to: the session is over. */
  onChildExit?: (exit: ChildExit) => void;
}

/** A client request in flight, as the channel reports it back. */
interface LegacyCall {
  id: JsonRpcId;
  stream: MessageStream;
  /** Set right after the channel took it. */
  handle: ChannelCall | null;
  /** The client takes a JSON answer: a response that comes first goes out without an event id. */
  jsonAnswer: boolean;
  /** The client takes SSE, so this request's stream can carry the child's messages to the client. */
  carriesServerMessages: boolean;
}

type ReplayEvent = OutboundEvent & EventPosition;

export class LegacySession {
  readonly id: string;
  readonly binding: SessionIdentity;
  /** When the session's first child was started (a rotation keeps it). */
  readonly startedAt: number;
  private readonly channel: ChildChannel<LegacyCall>;
  private readonly callByStream = new Map<MessageStream, LegacyCall>();
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
  private readonly closing = new Once();
  private lastActive: number;

  constructor(
    child: ChildProcess,
    private readonly options: LegacySessionOptions,
  ) {
    this.id = options.id;
    this.binding = { ...options.binding };
    this.lastActive = options.timers.now();
    this.startedAt = this.lastActive;
    this.replayMaxEvents = options.replayMaxEvents ?? 256;
    this.replayMaxBytes = options.replayMaxBytes ?? 1024 * 1024;
    this.replay = new ReplayBuffer(this.replayMaxEvents, this.replayMaxBytes);
    this.undelivered = new ReplayBuffer(this.replayMaxEvents, this.replayMaxBytes);
    this.channel = new ChildChannel<LegacyCall>(child, options, {
      progress: (call, incoming) => {
        if (call.carriesServerMessages) this.emit(call.stream, incoming.raw, incoming.message, "notification", "child");
        else this.toStandalone(incoming.raw, incoming.message, "notification");
      },
      answered: (call, incoming) => {
        this.callByStream.delete(call.stream);
        const replayable = !(call.jsonAnswer && call.stream.untouched);
        this.emit(call.stream, incoming.raw, incoming.message, "response", "child", replayable);
        this.endStream(call.stream);
      },
      failed: (call, code, message) => {
        this.callByStream.delete(call.stream);
        this.endWithError(call.stream, call.id, code, message);
      },
      cancelledByClient: (call) => {
        this.callByStream.delete(call.stream);
        this.endStream(call.stream);
      },
      childRequest: (request, callsOfChild) => this.childRequest(request, callsOfChild),
      childNotification: (incoming, callsOfChild) => {
        const target = this.streamFor(callsOfChild);
        if (target !== null) this.emit(target, incoming.raw, incoming.message, "notification", "child");
        else this.toStandalone(incoming.raw, incoming.message, "notification");
      },
      childExited: (exit) => {
        if (this.standalone !== null) this.endStream(this.standalone);
        this.options.onChildExit?.(exit);
      },
    });
  }

  /** Streams a client is connected to (request streams and the standalone one). */
  get activeStreams(): number {
    return this.liveStreams.size;
  }

  get inFlight(): number {
    return this.channel.inFlight;
  }

  /** Resolves once the session has no request in flight (at once when it has none). */
  callsSettled(): Promise<void> {
    return this.channel.callsSettled();
  }

  /** By when at the latest the first request now in flight is over (its timeout); null when none is. */
  get earliestRequestDeadline(): number | null {
    return this.channel.earliestRequestDeadline;
  }

  /** When a request last named the session, a message last passed, or a stream last opened or closed. */
  get lastActivity(): number {
    return this.lastActive;
  }

  /** Null while the session's child is serving; otherwise why not. */
  get closed(): string | null {
    return this.channel.closed;
  }

  get childPid(): number {
    return this.channel.childPid;
  }

  /** A request named this session. */
  touch(): void {
    this.lastActive = this.options.timers.now();
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
    const stream = this.newStream(this.nextStreamNo++);
    const call: LegacyCall = {
      id: incoming.message.id as JsonRpcId,
      stream,
      handle: null,
      jsonAnswer: options.jsonAnswer ?? false,
      // The registry collects initialize's stream whole before the client sees any of it, so a
      // request of the child's there would only be seen after the answer the child holds back for it.
      carriesServerMessages: incoming.message.method !== "initialize" && (options.sse ?? true),
    };
    this.callByStream.set(stream, call);
    call.handle = this.channel.call(incoming, call);
    return stream;
  }

  /** Forwards a client notification or response (e.g. an elicitation answer). Throws MessageTooLargeError. */
  send(incoming: IncomingMessage, kind: "notification" | "response"): void {
    this.checkSize(incoming.raw);
    this.touch();
    if (kind === "response") this.channel.respond(incoming);
    else this.channel.notify(incoming);
  }

  /** The standalone GET stream; anything buffered for it while it was closed comes first. Throws StreamConflictError. */
  openStandalone(): MessageStream {
    if (this.standalone?.isOpen) throw new StreamConflictError();
    const stream = this.newStream(STANDALONE_STREAM);
    this.standalone = stream;
    if (this.channel.closed !== null) {
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
    if (this.channel.closed !== null) this.endStream(stream);
    return stream;
  }

  /** Moves the session to a new child (token rotation); see ChildChannel.replaceChild. Throws RotationError. */
  replaceChild(child: ChildProcess, initializeTimeoutMs: number): Promise<void> {
    return this.channel.replaceChild(child, initializeTimeoutMs);
  }

  /** Ends the session: every waiting caller gets an error now, every stream ends, every child is stopped. */
  close(reason = "the session has ended"): Promise<void> {
    // Failing the calls in flight reaches handlers that may close again: they get this same close.
    return this.closing.run(() => this.shutDown(reason));
  }

  private async shutDown(reason: string): Promise<void> {
    const stopped = this.channel.close(reason);
    for (const stream of [...this.liveStreams]) this.endStream(stream);
    await stopped;
  }

  private childRequest(request: ChildRequest, callsOfChild: () => LegacyCall[]): void {
    const target = this.streamFor(callsOfChild);
    if (target === null) {
      this.refuseUndeliverable(request, callsOfChild);
      return;
    }
    const outgoing = request.forward();
    this.emit(target, outgoing.raw, outgoing.message, "request", "child");
  }

  /**
   * Where a child's own message can reach the client: the standalone stream if open; else the SSE
   * stream of this child's only request in flight that has one, which is almost surely what it
   * relates to; else nowhere now.
   */
  private streamFor(callsOfChild: () => LegacyCall[]): MessageStream | null {
    if (this.standalone?.isOpen) return this.standalone;
    const streaming = streamingOf(callsOfChild());
    return streaming.length === 1 ? streaming[0]!.stream : null;
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
  private refuseUndeliverable(request: ChildRequest, callsOfChild: () => LegacyCall[]): void {
    const streaming = streamingOf(callsOfChild()).length;
    const why =
      streaming === 0
        ? "the client has no GET stream open and no request in flight whose stream can carry it"
        : `the client has no GET stream open and ${streaming} requests in flight as SSE, so none is known to be the one this belongs to`;
    this.options.logger.warn("a server request could not be delivered to the client; the MCP server was told", { method: request.method, why });
    request.refuse(ErrorCode.Undeliverable, `${request.method} cannot be delivered: ${why}`);
  }

  private streamClosed(stream: MessageStream, reason: string): void {
    this.liveStreams.delete(stream);
    this.touch();
    if (this.standalone === stream) this.standalone = null;
    const call = this.callByStream.get(stream);
    if (call === undefined) return;
    // Nobody is left to read the answer.
    this.callByStream.delete(stream);
    this.channel.cancel(call.handle!, reason);
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
    const call = this.callByStream.get(stream);
    if (call !== undefined) {
      this.callByStream.delete(stream);
      this.channel.cancel(call.handle!, why);
      this.endWithError(stream, call.id, ErrorCode.ConnectionClosed, why);
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
}

function streamingOf(calls: LegacyCall[]): LegacyCall[] {
  return calls.filter((call) => call.carriesServerMessages);
}
