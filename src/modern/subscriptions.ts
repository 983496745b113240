// The subscriptions/listen streams open on one principal's child: each starts with its acknowledgement,
// then gets the child's list_changed and resources/updated its filter asks for, tagged with its subscription id.
import { SUBSCRIPTION_ID } from "../bridge/child-channel.ts";
import { ErrorCode, type IncomingMessage, type JsonRpcId, type JsonRpcMessage } from "../bridge/jsonrpc.ts";
import { MessageStream } from "../bridge/message-stream.ts";
import { McpRefusal, TRANSPORT_ERROR } from "../session/errors.ts";

export { SUBSCRIPTION_ID };

/** The most listen streams open on one grant's child, and on all of them together. */
export const MAX_LISTENERS_PER_GRANT = 16;
export const MAX_LISTENERS = 1024;
/** The most resource URIs one listen stream may name. */
export const MAX_RESOURCE_SUBSCRIPTIONS = 64;

/** What a listener asked for (and the child can send): the filter of subscriptions/listen. */
export interface ListenFilter {
  toolsListChanged: boolean;
  promptsListChanged: boolean;
  resourcesListChanged: boolean;
  resourceSubscriptions: string[];
}

/** Which filter flag each list_changed of the child answers to. */
const LIST_CHANGED: Record<string, "toolsListChanged" | "promptsListChanged" | "resourcesListChanged"> = {
  "notifications/tools/list_changed": "toolsListChanged",
  "notifications/prompts/list_changed": "promptsListChanged",
  "notifications/resources/list_changed": "resourcesListChanged",
};

/** The filter of a subscriptions/listen's params; throws McpRefusal 400 -32602 for a malformed one. */
export function listenFilter(params: unknown): ListenFilter {
  const notifications = (params as { notifications?: unknown } | null)?.notifications;
  if (notifications === null || typeof notifications !== "object" || Array.isArray(notifications)) {
    throw new McpRefusal(400, ErrorCode.InvalidParams, "Invalid params: subscriptions/listen needs params.notifications, the filter object");
  }
  const filter = notifications as Record<string, unknown>;
  const flag = (name: string): boolean => {
    const value = filter[name];
    if (value !== undefined && typeof value !== "boolean") throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: notifications.${name} must be a boolean`);
    return value === true;
  };
  const uris = filter.resourceSubscriptions ?? [];
  if (!Array.isArray(uris) || uris.some((uri) => typeof uri !== "string")) {
    throw new McpRefusal(400, ErrorCode.InvalidParams, "Invalid params: notifications.resourceSubscriptions must be an array of resource URIs");
  }
  if (uris.length > MAX_RESOURCE_SUBSCRIPTIONS) {
    throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: a listen stream may name at most ${MAX_RESOURCE_SUBSCRIPTIONS} resources`);
  }
  return {
    toolsListChanged: flag("toolsListChanged"),
    promptsListChanged: flag("promptsListChanged"),
    resourcesListChanged: flag("resourcesListChanged"),
    resourceSubscriptions: [...new Set(uris as string[])],
  };
}

/** The part of `wanted` a child with these (legacy) capabilities can send: what the acknowledgement reports. */
export function honoredFilter(wanted: ListenFilter, capabilities: unknown): ListenFilter {
  const caps = (capabilities ?? {}) as Record<string, { listChanged?: unknown; subscribe?: unknown } | undefined>;
  return {
    toolsListChanged: wanted.toolsListChanged && caps.tools?.listChanged === true,
    promptsListChanged: wanted.promptsListChanged && caps.prompts?.listChanged === true,
    resourcesListChanged: wanted.resourcesListChanged && caps.resources?.listChanged === true,
    resourceSubscriptions: caps.resources?.subscribe === true ? wanted.resourceSubscriptions : [],
  };
}

/** The filter as the acknowledgement states it: only what is on. */
function stated(filter: ListenFilter): Record<string, unknown> {
  const { resourceSubscriptions, ...flags } = filter;
  return { ...Object.fromEntries(Object.entries(flags).filter(([, on]) => on)), ...(resourceSubscriptions.length > 0 ? { resourceSubscriptions } : {}) };
}

/** Throws McpRefusal 429 when a grant with `openOnGrant` listen streams, or the broker with `total`, may open no more. */
export function checkListenRoom(openOnGrant: number, total: ListenerCount): void {
  if (openOnGrant >= MAX_LISTENERS_PER_GRANT) {
    throw new McpRefusal(429, TRANSPORT_ERROR, `Too Many Requests: this sign-in has ${MAX_LISTENERS_PER_GRANT} listen streams open, the most allowed; close one first`, { "Retry-After": "1" });
  }
  if (total.value >= MAX_LISTENERS) {
    throw new McpRefusal(429, TRANSPORT_ERROR, `Too Many Requests: the broker has ${MAX_LISTENERS} listen streams open, the most it holds; try again later`, { "Retry-After": "1" });
  }
}

/** How many listen streams are open over every grant; one is shared by all the grants' Listeners. */
export class ListenerCount {
  value = 0;
}

export interface ListenersDeps {
  maxMessageBytes: number;
  /** The open streams over every grant, counted against MAX_LISTENERS. */
  total: ListenerCount;
  /** Sends the child a legacy resources/subscribe (or unsubscribe) for `uri`; fire and forget. */
  resourceSubscription(method: "resources/subscribe" | "resources/unsubscribe", uri: string): void;
  /** A stream is over (closed by its caller or ended by the broker). */
  ended(): void;
}

interface Listener {
  id: JsonRpcId;
  filter: ListenFilter;
  stream: MessageStream;
  /** The Listeners of the child it listens on now (the stream moves with a token rotation). */
  owner: Listeners;
}

export class Listeners {
  private readonly open = new Set<Listener>();
  /** How many open listeners name each resource URI: the child is subscribed while it is above zero. */
  private readonly uriListeners = new Map<string, number>();
  private ended: string | null = null;

  constructor(private readonly deps: ListenersDeps) {}

  get size(): number {
    return this.open.size;
  }

  /**
   * Opens a listen stream for request `id` taking `filter` (already cut to what the child can send): its
   * first message is the acknowledgement. Closing it unsubscribes. Throws McpRefusal 429 past a bound,
   * 503 once the child is going.
   */
  listen(id: JsonRpcId, filter: ListenFilter): MessageStream {
    if (this.ended !== null) throw new McpRefusal(503, TRANSPORT_ERROR, `Service Unavailable: ${this.ended}; listen again`, { "Retry-After": "1" });
    checkListenRoom(this.open.size, this.deps.total);
    const listener: Listener = { id, filter, stream: null!, owner: this };
    listener.stream = new MessageStream(0, () => listener.owner.forget(listener), this.deps.maxMessageBytes);
    this.deps.total.value++;
    this.adopt(listener);
    this.send(listener, { jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { _meta: { [SUBSCRIPTION_ID]: id }, notifications: stated(filter) } });
    return listener.stream;
  }

  /** A notification of the child's own: a list_changed or resources/updated goes to each listener that asked for it; returns whether it was one. */
  deliver(incoming: IncomingMessage): boolean {
    const method = String(incoming.message.method);
    const params = (incoming.message.params ?? {}) as Record<string, unknown>;
    const flag = LIST_CHANGED[method];
    let wants: (filter: ListenFilter) => boolean;
    if (flag !== undefined) wants = (filter) => filter[flag];
    else if (method === "notifications/resources/updated") wants = (filter) => filter.resourceSubscriptions.includes(params.uri as string);
    else return false;
    for (const listener of [...this.open]) {
      if (!wants(listener.filter)) continue;
      const meta = (params._meta ?? {}) as Record<string, unknown>;
      this.send(listener, { ...incoming.message, params: { ...params, _meta: { ...meta, [SUBSCRIPTION_ID]: listener.id } } });
    }
    return true;
  }

  /**
   * The streams move to `target`, the grant's next child's (a token rotation): each keeps its filter and
   * its stream, and the uris they name are subscribed on the next child. The listeners are sent nothing.
   */
  moveTo(target: Listeners): void {
    for (const listener of [...this.open]) {
      this.open.delete(listener);
      target.adopt(listener);
    }
    // This child retires: its subscriptions end with it, nothing to unsubscribe.
    this.uriListeners.clear();
  }

  /** The child is going (retired, closed, exited): each stream ends with its listen's result, and no new one opens. */
  endAll(reason: string): void {
    this.ended ??= reason;
    for (const listener of [...this.open]) {
      this.send(listener, { jsonrpc: "2.0", id: listener.id, result: { resultType: "complete", _meta: { [SUBSCRIPTION_ID]: listener.id } } }, "response");
    }
  }

  private send(listener: Listener, message: JsonRpcMessage, kind: "notification" | "response" = "notification"): void {
    const data = JSON.stringify(message);
    const delivered = listener.stream.push({ eventId: "", data, message, kind, origin: kind === "response" ? "broker" : "child" });
    if (kind === "response" || !delivered) {
      listener.stream.end();
      this.forget(listener);
    }
  }

  /** `listener` listens on this child from now on: a uri it names that nobody else here does is subscribed on the child. */
  private adopt(listener: Listener): void {
    listener.owner = this;
    this.open.add(listener);
    for (const uri of listener.filter.resourceSubscriptions) {
      const count = this.uriListeners.get(uri) ?? 0;
      this.uriListeners.set(uri, count + 1);
      if (count === 0) this.deps.resourceSubscription("resources/subscribe", uri);
    }
  }

  /** The stream is over: it no longer counts, and a URI nobody else listens to is unsubscribed on the child. */
  private forget(listener: Listener): void {
    if (!this.open.delete(listener)) return;
    this.deps.total.value--;
    this.deps.ended();
    for (const uri of listener.filter.resourceSubscriptions) {
      const count = (this.uriListeners.get(uri) ?? 1) - 1;
      if (count > 0) {
        this.uriListeners.set(uri, count);
        continue;
      }
      this.uriListeners.delete(uri);
      if (this.ended === null) this.deps.resourceSubscription("resources/unsubscribe", uri);
    }
  }
}
