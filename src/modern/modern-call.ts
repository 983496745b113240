// One modern caller's call on its principal's legacy child, across MRTR rounds: progress, wanted logs and
// the answer go to whichever HTTP request now carries it, and the child's elicitation, sampling and roots requests become input_required.
import type { ChannelCall, ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, errorResponse, withId, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import { MessageStream } from "../bridge/message-stream.ts";
import type { TimerHandle, Timers } from "../supervisor/timers.ts";
import type { Continuations, Parked } from "./continuations.ts";
import { paramsHash, type RequestStateSealer, type StateBinding } from "./request-state.ts";
import { modernAnswer } from "./results.ts";
import { META, metaOf } from "./versions.ts";

/** The spec's code for a server needing a client capability the request did not declare. */
export const MISSING_CAPABILITY = -32021;
/** The methods MRTR may interrupt (2026-07-28 allows input_required on these only). */
const ASKING_METHODS = new Set(["tools/call", "resources/read", "prompts/get"]);
/** Which declared client capability each child request needs. */
const CAPABILITY_OF: Record<string, string> = { "elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots" };
/** The most child requests one call may have waiting for its caller; more are refused at once. */
export const MAX_INPUT_REQUESTS = 16;
/**
 * How long after the first of a call's child requests it waits for more before it puts them to its caller:
 * what a child asks at once can arrive in two reads of its stdout on a busy machine, and must go out as one.
 */
export const ASKED_TOGETHER_MS = 10;

/** What every call of one principal's child shares: the child passes its own on to each call. */
export interface ModernCallSettings {
  timers: Timers;
  /** How long the child has for the call, counted anew after each retry (the time a caller takes to answer is not the child's). */
  requestTimeoutMs: number;
  maxMessageBytes: number;
  /** The grant the child serves, which each MRTR requestState is bound to. */
  grantId: string;
  /** Where a call waiting for its caller's input is parked until the retry. */
  continuations: Continuations<ModernCall>;
  sealer: RequestStateSealer;
}

export interface ModernCallDeps extends ModernCallSettings {
  /** Tells the child to stop the call (notifications/cancelled); reports nothing back. */
  cancel(handle: ChannelCall, reason: string): void;
  /** The call's timeout starts over, `ms` from now. */
  restartTimeout(handle: ChannelCall, ms: number): void;
  /** The call is over without an answer from the child (cancelled): the principal child counts it. */
  over(): void;
  /** Its input_required went out: it now waits for its caller's retry. */
  waiting(): void;
}

/** What a caller gets for a call: its id is filled in by whichever request carries the call when it comes. */
type AnswerFor = (id: JsonRpcId) => string;

export class ModernCall implements Parked {
  /** The call as the channel knows it; set right after it is written to the child. */
  handle: ChannelCall | null = null;
  private stream: MessageStream | null = null;
  private callerId: JsonRpcId;
  private sse: boolean;
  private meta: Record<string, unknown>;
  private readonly method: string;
  private readonly binding: StateBinding;
  /** The call ended while no request carried it: the next retry gets this. */
  private pendingAnswer: AnswerFor | null = null;
  /** The child's requests the caller was asked in the last input_required, by key. */
  private readonly asked = new Map<string, ChildRequest>();
  /** The child's requests not yet put to the caller, by key. */
  private readonly unsent = new Map<string, ChildRequest>();
  private nextKey = 1;
  /** Gathers the requests the child sends together into one input_required. */
  private flushTimer: TimerHandle | null = null;
  /** The call on the child is over (answered, failed, cancelled or abandoned). */
  private ended = false;
  /** Answers the caller already gave, by key: a re-run of its call (its holder is gone) answers the child's requests from them. */
  private readonly given: Map<string, unknown>;

  constructor(
    incoming: IncomingMessage,
    sse: boolean,
    private readonly deps: ModernCallDeps,
    given: Record<string, unknown> = {},
  ) {
    this.given = new Map(Object.entries(given));
    this.method = String(incoming.message.method);
    this.callerId = incoming.message.id as JsonRpcId;
    this.sse = sse;
    this.meta = metaOf(incoming.message.params) ?? {};
    this.binding = { grantId: deps.grantId, method: this.method, paramsHash: paramsHash(incoming.message.params) };
    this.stream = this.attach(this.callerId, sse);
  }

  /** The stream of the request that carries the call now (the first one's, then each retry's). */
  get current(): MessageStream {
    return this.stream!;
  }

  /** Its input_required went out and no retry has carried it on yet. */
  get waitingForRetry(): boolean {
    return !this.ended && this.stream === null && this.asked.size > 0;
  }

  /** The logLevel of the request that carries the call now. */
  get logLevel(): unknown {
    return this.meta[META.logLevel];
  }

  progress(incoming: IncomingMessage): void {
    if (this.sse) this.push(incoming.raw, "notification", "child");
  }

  answered(answer: IncomingMessage): void {
    this.finish((id) => modernAnswer(this.method, JSON.parse(withId(answer.message, id)) as JsonRpcMessage), "child");
  }

  failed(code: number, message: string): void {
    this.finish((id) => errorResponse(id, code, message), "broker");
  }

  cancelled(): void {
    this.finish((id) => errorResponse(id, ErrorCode.ConnectionClosed, "the request was cancelled"), "broker");
  }

  /** The child asked its client something while this was its one call in flight. */
  asks(request: ChildRequest): void {
    const capability = CAPABILITY_OF[request.method];
    if (this.ended || capability === undefined || !ASKING_METHODS.has(this.method)) {
      request.refuse(ErrorCode.Undeliverable, `${request.method} cannot be relayed to a MCP 2026-07-28 client during ${this.method}`);
      return;
    }
    const declared = (this.meta[META.clientCapabilities] as Record<string, unknown> | undefined)?.[capability];
    if (declared === undefined || declared === null) {
      request.refuse(ErrorCode.Undeliverable, `the client did not declare the ${capability} capability`);
      this.stop(`the client did not declare the ${capability} capability`, (id) =>
        errorResponse(id, MISSING_CAPABILITY, `Missing client capability: the server needs ${capability} to complete this request`, { requiredCapabilities: { [capability]: {} } }),
      );
      return;
    }
    if (this.asked.size + this.unsent.size >= MAX_INPUT_REQUESTS) {
      request.refuse(ErrorCode.Undeliverable, `${request.method} cannot be relayed: ${MAX_INPUT_REQUESTS} requests of this call already wait for the client`);
      return;
    }
    // Keys follow the order of the child's requests, so a re-run's child asking the same things finds the caller's answers under them.
    const key = `${capability}-${this.nextKey++}`;
    if (this.given.has(key)) {
      const answer = this.given.get(key);
      this.given.delete(key);
      request.reply(answer);
      return;
    }
    this.unsent.set(key, request);
    this.scheduleFlush();
  }

  /** Why a retry's inputResponses cannot answer what the caller was asked; null when they can. */
  responsesProblem(inputResponses: unknown): string | null {
    if (this.asked.size === 0) return null;
    if (inputResponses === null || typeof inputResponses !== "object" || Array.isArray(inputResponses)) return "inputResponses must be an object";
    for (const key of this.asked.keys()) {
      const response = (inputResponses as Record<string, unknown>)[key];
      if (response === null || typeof response !== "object" || Array.isArray(response)) return `inputResponses[${JSON.stringify(key)}] must be the answer object`;
    }
    return null;
  }

  /** The caller's retry (checked: its state, method, params and responses): answers the child and carries the call on. */
  resume(retry: IncomingMessage, sse: boolean): MessageStream {
    const stream = this.attach(retry.message.id as JsonRpcId, sse);
    this.meta = metaOf(retry.message.params) ?? {};
    const responses = (retry.message.params as { inputResponses?: Record<string, unknown> }).inputResponses ?? {};
    for (const [key, request] of this.asked) request.reply(responses[key]);
    this.asked.clear();
    if (this.handle !== null && !this.ended) this.deps.restartTimeout(this.handle, this.deps.requestTimeoutMs);
    if (this.pendingAnswer !== null) {
      const answer = this.pendingAnswer;
      this.pendingAnswer = null;
      this.push(answer(this.callerId), "response", "broker");
    } else this.scheduleFlush();
    return stream;
  }

  /** Nobody retried before the deadline: the child's requests get an error and the call is cancelled. */
  abandon(reason: string): void {
    this.pendingAnswer = null;
    this.stop(reason, null);
  }

  private attach(id: JsonRpcId, sse: boolean): MessageStream {
    this.callerId = id;
    this.sse = sse;
    const stream = new MessageStream(
      0,
      (_closed, reason) => {
        if (this.stream !== stream) return;
        // The caller went away before its answer: the child is told to stop (notifications/cancelled).
        this.stream = null;
        this.stop(reason, null);
      },
      this.deps.maxMessageBytes,
    );
    this.stream = stream;
    return stream;
  }

  private push(data: string, kind: "notification" | "response", origin: "child" | "broker"): void {
    const stream = this.stream;
    if (stream === null) return;
    const delivered = stream.push({ eventId: "", data, message: JSON.parse(data) as JsonRpcMessage, kind, origin });
    if (kind === "response" || !delivered) {
      this.stream = null;
      stream.end();
      if (!delivered) this.stop("the client did not read its event stream", null);
    }
  }

  /** The child's call is over: the caller gets `answer` now, or on its retry when none carries the call. */
  private finish(answer: AnswerFor, origin: "child" | "broker"): void {
    this.ended = true;
    this.refuseOutstanding("the call they belong to is over");
    if (this.stream !== null) this.push(answer(this.callerId), "response", origin);
    else this.pendingAnswer = answer;
  }

  /** Ends the call from the broker's side: the child's requests refused, the call cancelled, and `answer` (if any) to the caller. */
  private stop(reason: string, answer: AnswerFor | null): void {
    if (this.ended) return;
    this.ended = true;
    this.refuseOutstanding(reason);
    if (this.handle !== null) this.deps.cancel(this.handle, reason);
    this.deps.over();
    if (answer === null) return;
    // Parked (no request carries the call): the retry gets it.
    if (this.stream !== null) this.push(answer(this.callerId), "response", "broker");
    else this.pendingAnswer = answer;
  }

  private refuseOutstanding(reason: string): void {
    if (this.flushTimer !== null) this.deps.timers.clearTimeout(this.flushTimer);
    this.flushTimer = null;
    for (const request of [...this.asked.values(), ...this.unsent.values()]) request.refuse(ErrorCode.Undeliverable, `${request.method} was not answered: ${reason}`);
    this.asked.clear();
    this.unsent.clear();
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== null || this.stream === null || this.unsent.size === 0) return;
    this.flushTimer = this.deps.timers.setTimeout(() => this.flush(), ASKED_TOGETHER_MS);
  }

  /** Puts the child's unsent requests to the caller as one input_required; the call waits, parked, for the retry. */
  private flush(): void {
    this.flushTimer = null;
    if (this.ended || this.stream === null || this.unsent.size === 0) return;
    const parked = this.deps.continuations.park(this);
    if (parked === null) {
      this.stop("too many calls wait for their callers' answers", (id) =>
        errorResponse(id, ErrorCode.InternalError, "the broker holds too many calls waiting for input; try again later"),
      );
      return;
    }
    const inputRequests: Record<string, { method: string; params: unknown }> = {};
    for (const [key, request] of this.unsent) {
      inputRequests[key] = { method: request.method, params: request.params ?? {} };
      this.asked.set(key, request);
    }
    this.unsent.clear();
    // Parked, the call outlives its deadline only by a full timeout: the deadline's abandonment ends it first.
    if (this.handle !== null) this.deps.restartTimeout(this.handle, parked.deadline - this.deps.timers.now() + this.deps.requestTimeoutMs);
    const requestState = this.deps.sealer.seal({ continuationId: parked.id, deadline: parked.deadline, asked: Object.keys(inputRequests) }, this.binding);
    this.push(JSON.stringify({ jsonrpc: "2.0", id: this.callerId, result: { resultType: "input_required", inputRequests, requestState } }), "response", "broker");
    this.deps.waiting();
  }
}
