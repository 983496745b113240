// One modern caller's call on its principal's 2026-07-28 child: the child's progress, wanted logs and answer
// go to the caller's stream as the child wrote them (ids restored by the channel), its own requestState sealed to the grant.
import type { ChannelCall } from "../bridge/child-channel.ts";
import { ErrorCode, errorResponse, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import { MessageStream } from "../bridge/message-stream.ts";
import type { Timers } from "../supervisor/timers.ts";
import type { Caller } from "./principal-child.ts";
import { paramsHash, type RequestStateSealer, type StateBinding } from "./request-state.ts";
import { META, metaOf } from "./versions.ts";

export interface NativeCallDeps {
  timers: Timers;
  maxMessageBytes: number;
  /** The grant whose child serves the call: the child's requestState is bound to it. */
  grantId: string;
  sealer: RequestStateSealer;
  /** How long the caller has to retry with the child's requestState. */
  continuationDeadlineMs: number;
  /** Tells the child to stop the call (notifications/cancelled with its rewritten id). */
  cancel(handle: ChannelCall, reason: string): void;
  /** The broker cancelled the call (its caller went away): no answer comes from the child. */
  cancelled(): void;
}

export class NativeCall implements Caller {
  /** The call as the channel knows it; set right after it is written to the child. */
  handle: ChannelCall | null = null;
  readonly stream: MessageStream;
  /** Set once the answer went out or the call was cancelled. */
  private over = false;
  private readonly id: JsonRpcId;
  private readonly meta: Record<string, unknown>;
  private readonly binding: StateBinding;

  constructor(
    incoming: IncomingMessage,
    private readonly sse: boolean,
    private readonly deps: NativeCallDeps,
  ) {
    this.id = incoming.message.id as JsonRpcId;
    this.meta = metaOf(incoming.message.params) ?? {};
    this.binding = { grantId: deps.grantId, method: String(incoming.message.method), paramsHash: paramsHash(incoming.message.params) };
    // The caller went away before its answer: the child is told to stop.
    this.stream = new MessageStream(0, (_stream, reason) => this.cancel(reason), deps.maxMessageBytes);
  }

  get logLevel(): unknown {
    return this.meta[META.logLevel];
  }

  /** The call's progress: on the caller's stream when it takes SSE. */
  progress(incoming: IncomingMessage): void {
    if (this.sse) this.push(incoming.raw, "notification", "child");
  }

  answered(incoming: IncomingMessage): void {
    this.push(this.sealed(incoming), "response", "child");
  }

  failed(code: number, message: string): void {
    this.push(errorResponse(this.id, code, message), "response", "broker");
  }

  cancelled(): void {
    this.push(errorResponse(this.id, ErrorCode.ConnectionClosed, "the request was cancelled"), "response", "broker");
  }

  /**
   * The child's answer as the caller gets it: an input_required's requestState is the child's own, so it is
   * sealed inside the broker's, bound to this grant, method, params and a deadline; the retry unwraps it
   * (PrincipalChildren.resume) and nothing of another grant's, nor a changed retry, reaches the child.
   */
  private sealed(incoming: IncomingMessage): string {
    const result = incoming.message.result as { resultType?: unknown; requestState?: unknown } | undefined;
    if (result?.resultType !== "input_required" || typeof result.requestState !== "string") return incoming.raw;
    const deadline = this.deps.timers.now() + this.deps.continuationDeadlineMs;
    const requestState = this.deps.sealer.seal({ childState: result.requestState, deadline }, this.binding);
    return JSON.stringify({ ...incoming.message, result: { ...result, requestState } } satisfies JsonRpcMessage);
  }

  private cancel(reason: string): void {
    if (this.over) return;
    this.over = true;
    if (this.handle !== null) this.deps.cancel(this.handle, reason);
    this.deps.cancelled();
  }

  private push(data: string, kind: "notification" | "response", origin: "child" | "broker"): void {
    if (kind === "response") this.over = true;
    const delivered = this.stream.push({ eventId: "", data, message: JSON.parse(data) as JsonRpcMessage, kind, origin });
    if (kind === "response") this.stream.end();
    else if (!delivered) {
      this.cancel("the client did not read its event stream");
      this.stream.end();
    }
  }
}
