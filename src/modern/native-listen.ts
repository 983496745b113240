// One caller's subscriptions/listen on its principal's 2026-07-28 child: the stream is the caller's, the
// listen the child's — re-sent to the grant's next child on a token rotation, whose acknowledgement the caller already had.
import { ErrorCode, errorResponse, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import { MessageStream } from "../bridge/message-stream.ts";
import type { Caller } from "./principal-child.ts";

/** The listen as one child holds it: the channel's context for it, and how to take it back from that child. */
export interface ListenLeg extends Caller {
  /** Tells the child holding it to stop the listen (notifications/cancelled); reports nothing. */
  withdraw(reason: string): void;
}

export class NativeListen {
  readonly stream: MessageStream;
  private readonly id: JsonRpcId;
  private leg: ListenLeg | null = null;
  private acknowledged = false;
  private over = false;
  /** The listen is over for good (its caller closed it, or a child or the broker ended it): told once, to the child holding it. */
  ended: () => void = () => {};

  constructor(
    readonly request: IncomingMessage,
    maxMessageBytes: number,
  ) {
    this.id = request.message.id as JsonRpcId;
    this.stream = new MessageStream(0, (_stream, reason) => this.finish(reason, null), maxMessageBytes);
  }

  /**
   * The context the channel of the child about to hold the listen reports to; `withdraw` takes it back from
   * that child. A leg no longer current (moved on, or over) reports nothing to the caller.
   */
  legOn(withdraw: (reason: string) => void): ListenLeg {
    const leg: ListenLeg = {
      logLevel: undefined,
      progress: (incoming) => leg === this.leg && this.notification(incoming),
      answered: (incoming) => leg === this.leg && this.finish("the MCP server ended the listen", incoming.raw),
      failed: (code, message) => leg === this.leg && this.finish(message, errorResponse(this.id, code, message)),
      cancelled: () => leg === this.leg && this.finish("the listen was cancelled", errorResponse(this.id, ErrorCode.ConnectionClosed, "the listen was cancelled")),
      withdraw,
    };
    this.leg?.withdraw("the listen moved to the grant's next MCP server");
    this.leg = leg;
    return leg;
  }

  /** The broker ends it (its child goes): the child is told, and the caller gets the listen's result. */
  end(reason: string, answer: string): void {
    this.finish(reason, answer);
  }

  private notification(incoming: IncomingMessage): void {
    // A next child's acknowledgement is not news to the caller: the stream started with the first one.
    if (incoming.message.method === "notifications/subscriptions/acknowledged") {
      if (this.acknowledged) return;
      this.acknowledged = true;
    }
    if (!this.push(incoming.raw, "notification")) this.finish("the client did not read its event stream", null);
  }

  private finish(reason: string, answer: string | null): void {
    if (this.over) return;
    this.over = true;
    const leg = this.leg;
    this.leg = null;
    leg?.withdraw(reason);
    if (answer !== null) this.push(answer, "response");
    this.stream.end();
    this.ended();
  }

  private push(data: string, kind: "notification" | "response"): boolean {
    return this.stream.push({ eventId: "", data, message: JSON.parse(data) as JsonRpcMessage, kind, origin: kind === "response" ? "broker" : "child" });
  }
}
