// A principal's 2026-07-28 child as modern callers share it: no initialize; the broker asks it server/discover
// once, then forwards each request (envelope intact, ids rewritten) and each subscriptions/listen natively.
import type { ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, type IncomingMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import { McpRefusal, TRANSPORT_ERROR } from "../session/errors.ts";
import { discoverResult } from "./discover.ts";
import { NativeCall } from "./native-call.ts";
import { PrincipalChild, type Caller } from "./principal-child.ts";
import { logWanted } from "./results.ts";
import { checkListenRoom, listenFilter, SUBSCRIPTION_ID } from "./subscriptions.ts";
import { META, MODERN_PROTOCOL_VERSIONS } from "./versions.ts";

/** The envelope of the broker's own server/discover: discovery needs no client capabilities. */
const BROKER_ENVELOPE = {
  [META.protocolVersion]: MODERN_PROTOCOL_VERSIONS[0],
  [META.clientCapabilities]: {},
  [META.clientInfo]: { name: "forgejo-mcp-broker", version: "1" },
};

export class ModernPrincipalChild extends PrincipalChild {
  private discovered: Record<string, unknown> | null = null;
  /** The callers' listen streams, each a subscriptions/listen open on the child. */
  private readonly listens = new Set<NativeCall>();
  private listensEnded: string | null = null;

  get discoverResult(): Record<string, unknown> {
    if (this.discovered === null) throw new Error("the principal's child has not been discovered");
    const { capabilities, instructions, _meta } = this.discovered;
    return discoverResult({ capabilities, instructions, serverInfo: (_meta as Record<string, unknown> | undefined)?.[META.serverInfo] });
  }

  get listening(): number {
    return this.listens.size;
  }

  /** Asks the child server/discover: its capabilities, instructions and serverInfo for this principal (never shared with another). */
  async start(timeoutMs: number): Promise<string | null> {
    const answer = await this.brokerRequest("server/discover", { _meta: BROKER_ENVELOPE }, timeoutMs, (caller) => caller);
    if (typeof answer === "string") return answer;
    if ("error" in answer) return `the MCP server refused server/discover: ${JSON.stringify(answer.error)}`;
    this.discovered = (answer.result ?? {}) as Record<string, unknown>;
    return null;
  }

  call(incoming: IncomingMessage, options: { sse?: boolean } = {}): MessageStream {
    this.touch();
    return this.forward(incoming, options.sse ?? true, false, () => {}).stream;
  }

  /**
   * Forwarded as it is, under the broker's id: the child acknowledges and tags its notifications with that
   * id, which the channel maps back to the caller's. It stays open (no timeout) until the caller closes it
   * (the child is sent notifications/cancelled) or either side ends it.
   */
  listen(incoming: IncomingMessage): MessageStream {
    listenFilter(incoming.message.params);
    if (this.listensEnded !== null) throw new McpRefusal(503, TRANSPORT_ERROR, `Service Unavailable: ${this.listensEnded}; listen again`, { "Retry-After": "1" });
    checkListenRoom(this.listens.size, this.options.listenerCount);
    this.touch();
    const listen = this.forward(incoming, true, true, () => this.listenOver(listen));
    if (!listen.over) {
      this.listens.add(listen);
      this.options.listenerCount.value++;
    }
    return listen.stream;
  }

  /** A listen is the child's own (its acknowledgement, its ids): it ends with this child, and its caller listens again. */
  handOverListeners(): void {}

  /** Each listen ends with its listen's result, and the child is told to stop it. */
  protected endListeners(reason: string): void {
    this.listensEnded ??= reason;
    for (const listen of [...this.listens]) {
      const id = listen.handle!.id;
      listen.end(reason, JSON.stringify({ jsonrpc: "2.0", id, result: { resultType: "complete", _meta: { [SUBSCRIPTION_ID]: id } } }));
    }
  }

  /** A 2026-07-28 server must not send requests (it asks through input_required): refused, whatever it is. */
  protected childRequest(request: ChildRequest): void {
    this.options.logger.warn("a 2026-07-28 child sent a request, which its era forbids; refused", { method: request.method });
    request.refuse(ErrorCode.MethodNotFound, `Method not found: a 2026-07-28 client takes no ${request.method} request`);
  }

  /** A log names no request on stdio: it goes to the one call in flight when that call asked for its level; anything else is dropped. */
  protected childNotification(incoming: IncomingMessage, callsOfChild: () => Caller[]): void {
    if (incoming.message.method !== "notifications/message") return;
    // A listen is no call a log can be about.
    const calls = callsOfChild().filter((call) => !(call instanceof NativeCall && this.listens.has(call)));
    const level = (incoming.message.params as { level?: unknown } | undefined)?.level;
    if (calls.length === 1 && logWanted(level, calls[0]!.logLevel)) calls[0]!.progress(incoming);
  }

  private forward(incoming: IncomingMessage, sse: boolean, untimed: boolean, ended: () => void): NativeCall {
    const call = new NativeCall(incoming, sse, {
      ...this.options,
      cancel: (handle, reason) => this.channel.cancel(handle, reason),
      cancelled: () => this.over(() => {}),
      ended,
    });
    call.handle = this.channel.call(incoming, call, { untimed });
    return call;
  }

  /** The listen is over (either side ended it): it no longer counts, and the idle clock starts again. */
  private listenOver(listen: NativeCall): void {
    if (!this.listens.delete(listen)) return;
    this.options.listenerCount.value--;
    this.touch();
  }
}
