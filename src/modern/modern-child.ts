// A principal's 2026-07-28 child as modern callers share it: no initialize; the broker asks it server/discover
// once, then forwards each request (envelope intact, ids rewritten) and each subscriptions/listen natively, moving listens on a token rotation.
import type { ChannelCall, ChildRequest } from "../bridge/child-channel.ts";
import { ErrorCode, type IncomingMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import { McpRefusal, TRANSPORT_ERROR } from "../session/errors.ts";
import { discoverResult } from "./discover.ts";
import { NativeCall } from "./native-call.ts";
import { NativeListen } from "./native-listen.ts";
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
  private readonly listens = new Set<NativeListen>();
  private listensEnded: string | null = null;

  get discoverResult(): Record<string, unknown> {
    if (this.discovered === null) throw new Error("the principal's child has not been discovered");
    const { capabilities, instructions, _meta } = this.discovered;
    return discoverResult({ capabilities, instructions, serverInfo: (_meta as Record<string, unknown> | undefined)?.[META.serverInfo] });
  }

  get listening(): number {
    return this.listens.size;
  }

  /** The callers' calls: a listen, or the broker's own discover, is none (an input_required ended its call on the child). */
  get runningCalls(): number {
    return this.channel.calls.filter((call) => call instanceof NativeCall).length;
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
    const call = new NativeCall(incoming, options.sse ?? true, {
      ...this.options,
      cancel: (handle, reason) => this.channel.cancel(handle, reason),
      cancelled: () => this.over(() => {}),
    });
    call.handle = this.channel.call(incoming, call);
    return call.stream;
  }

  /**
   * Forwarded as it is, under the broker's id: the child acknowledges and tags its notifications with that
   * id, which the channel maps back to the caller's. It stays open (no timeout) until the caller closes it
   * (the child is sent notifications/cancelled) or either side ends it; a token rotation moves it to the next child.
   */
  listen(incoming: IncomingMessage): MessageStream {
    listenFilter(incoming.message.params);
    if (this.listensEnded !== null) throw new McpRefusal(503, TRANSPORT_ERROR, `Service Unavailable: ${this.listensEnded}; listen again`, { "Retry-After": "1" });
    checkListenRoom(this.listens.size, this.options.listenerCount);
    this.touch();
    const listen = new NativeListen(incoming, this.options.maxMessageBytes);
    this.options.listenerCount.value++;
    this.adopt(listen);
    return listen.stream;
  }

  /** Each listen is sent again to the next child, and taken back from this one; the caller's stream goes on. */
  handOverListeners(next: PrincipalChild): void {
    if (!(next instanceof ModernPrincipalChild)) return;
    for (const listen of [...this.listens]) {
      this.listens.delete(listen);
      next.adopt(listen);
    }
  }

  /** Each listen ends with its listen's result, and the child is told to stop it. */
  protected endListeners(reason: string): void {
    this.listensEnded ??= reason;
    for (const listen of [...this.listens]) {
      const id = listen.request.message.id;
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
    // A listen, or the broker's own discover, is no call a log can be about.
    const calls = callsOfChild().filter((call) => call instanceof NativeCall);
    const level = (incoming.message.params as { level?: unknown } | undefined)?.level;
    if (calls.length === 1 && logWanted(level, calls[0]!.logLevel)) calls[0]!.progress(incoming);
  }

  /** `listen` is held on this child from now on: sent to it under the broker's id, with no timeout. */
  private adopt(listen: NativeListen): void {
    this.listens.add(listen);
    listen.ended = () => this.listenOver(listen);
    let handle: ChannelCall | null = null;
    const leg = listen.legOn((reason) => {
      if (handle !== null) this.channel.cancel(handle, reason);
    });
    handle = this.channel.call(listen.request, leg, { untimed: true });
  }

  /** The listen is over (either side ended it): it no longer counts, and the idle clock starts again. */
  private listenOver(listen: NativeListen): void {
    if (!this.listens.delete(listen)) return;
    this.options.listenerCount.value--;
    this.touch();
  }
}
