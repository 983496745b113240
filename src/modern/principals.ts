// One child per principal (grant) for modern callers: started on the grant's first request (single-
// flight) in a slot under the session caps, reaped when idle, retired when the user's token rotates or is due, stopped when the grant ends;
// an MRTR retry resumes its call on whichever of them holds it.
import { ErrorCode, type IncomingMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import type { SessionConfig } from "../config.ts";
import { randomHex } from "../crypto.ts";
import type { Logger } from "../log.ts";
import { McpRefusal, SessionLimitError, SessionRevokedError, SessionStartError } from "../session/errors.ts";
import type { CappedChild, SessionIdentity, UpstreamTokenProvider } from "../session/registry.ts";
import { ChildStartError, type SpawnChild } from "../supervisor/child.ts";
import { every, reapIntervalFor, type TimerHandle, type Timers } from "../supervisor/timers.ts";
import { MIN_REFRESH_INTERVAL_MS, refreshDueAt } from "../upstream/refresh-timing.ts";
import { Continuations } from "./continuations.ts";
import type { ModernCall } from "./modern-call.ts";
import { PrincipalChild } from "./principal-child.ts";
import { paramsHash, RequestStateSealer } from "./request-state.ts";
import { ListenerCount } from "./subscriptions.ts";

export interface PrincipalChildrenDeps {
  config: SessionConfig;
  spawn: SpawnChild;
  upstreamToken: UpstreamTokenProvider;
  logger: Logger;
  timers: Timers;
  /**
   * A slot under BROKER_MAX_SESSIONS and the per-user cap for a child about to start (the legacy
   * registry's, which counts `capped()` too); the function it gives frees it. Without it, no cap.
   */
  reserveSlot?: (forgejoUserId: number) => Promise<() => void>;
  /** Whether a client can still act under the grant; without it, every grant is live. */
  grantIsLive?: (grantId: string) => Promise<boolean>;
  initializeTimeoutMs?: number;
  reapIntervalMs?: number;
  /** How long a caller has to retry after an input_required result; 10 minutes by default. */
  continuationDeadlineMs?: number;
}

interface Principal {
  child: PrincipalChild;
  forgejoUserId: number;
  /** Settles once its process has exited: until then it holds a slot under the caps, serving or not. */
  exited: Promise<void>;
  /** Retires the child when its token is due for a refresh. */
  dueTimer: TimerHandle | null;
  startedAt: number;
}

/** A principal's child as the admin command lists it. */
export interface PrincipalChildEntry {
  grantId: string;
  forgejoUserId: number;
  child: PrincipalChild;
  startedAt: number;
  /** False once retired or stopped: it ends its calls and exits. */
  serving: boolean;
}

const SHUTDOWN_RETRY_AFTER_S = 30;
const CONTINUATION_DEADLINE_MS = 10 * 60_000;
/** The most calls waiting for their callers' input at once, over every grant. */
const MAX_CONTINUATIONS = 1024;
/** The longest delay a timer takes as given (about 24.8 days); a child retired that early loses nothing. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class PrincipalChildren {
  /** The grant's child once started, or its start under way (which every concurrent first request awaits). */
  private readonly starts = new Map<string, Promise<Principal>>();
  /** The child serving each grant now. */
  private readonly live = new Map<string, Principal>();
  /** Every child whose process has not exited yet: the serving ones, and those retired or stopped on their way out. */
  private readonly running = new Map<Principal, string>();
  private readonly stopReaping: () => void;
  private shuttingDown = false;
  /** Revocation notices so far: a start asks about its grant again when one arrived while it was asking. */
  private revocationNotices = 0;
  /** Calls waiting for their callers' retries, whichever child (serving or retiring) holds them. */
  readonly continuations: Continuations<ModernCall>;
  private readonly sealer = new RequestStateSealer();
  /** The listen streams open on every child. */
  private readonly listenerCount = new ListenerCount();

  constructor(private readonly deps: PrincipalChildrenDeps) {
    this.continuations = new Continuations({
      timers: deps.timers,
      deadlineMs: deps.continuationDeadlineMs ?? CONTINUATION_DEADLINE_MS,
      maxEntries: MAX_CONTINUATIONS,
    });
    this.stopReaping = every(deps.timers, deps.reapIntervalMs ?? reapIntervalFor(deps.config.idleTimeoutMs), () => void this.reapIdle());
  }

  /** How many principal children are serving. */
  get size(): number {
    return this.live.size;
  }

  /** Every child with a process as the caps see them: a serving one may be evicted (stopped now); one on its way out holds its slot until it has exited. */
  capped(): CappedChild[] {
    return [...this.running].map(([principal, grantId]) => ({
      forgejoUserId: principal.forgejoUserId,
      // A child with listeners is not idle, so not the one to make room.
      inFlight: principal.child.inFlight + principal.child.listening,
      lastActivity: principal.child.lastActivity,
      earliestRequestDeadline: principal.child.earliestRequestDeadline,
      exiting: this.live.get(grantId) === principal ? null : principal.exited,
      evict: (reason) => this.stop(grantId, principal, reason),
    }));
  }

  /** Every child with a process, serving or on its way out (for the admin command's listing). */
  list(): PrincipalChildEntry[] {
    return [...this.running].map(([principal, grantId]) => ({
      grantId,
      forgejoUserId: principal.forgejoUserId,
      child: principal.child,
      startedAt: principal.startedAt,
      serving: this.live.get(grantId) === principal,
    }));
  }

  /** The grant's child serving now, if any (for tests and logs). */
  childOf(grantId: string): PrincipalChild | null {
    return this.live.get(grantId)?.child ?? null;
  }

  /**
   * The grant's serving child, started with the user's upstream token and initialized on the first call.
   * Throws SessionStartError, SessionRevokedError, SessionLimitError (shutting down), or what the token provider throws.
   */
  async childFor(identity: SessionIdentity): Promise<PrincipalChild> {
    for (;;) {
      if (this.shuttingDown) throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
      let start = this.starts.get(identity.grantId);
      if (start === undefined) {
        start = this.start(identity);
        this.starts.set(identity.grantId, start);
        const forget = () => {
          if (this.starts.get(identity.grantId) === start) this.starts.delete(identity.grantId);
        };
        start.catch(forget);
      }
      const principal = await start;
      if (principal.child.closed === null) return principal.child;
      // It exited or retired between its start and now: the loop starts the next one.
      this.forget(identity.grantId, principal);
      if (this.starts.get(identity.grantId) === start) this.starts.delete(identity.grantId);
    }
  }

  /**
   * A caller's MRTR retry (params.requestState set): its call resumes on the child that holds it, with
   * the child's requests answered from inputResponses. Throws McpRefusal 400 -32602, with nothing sent to
   * the child, for a state that is forged, another grant's, expired, already used or for other method or params.
   */
  resume(identity: SessionIdentity, retry: IncomingMessage, options: { sse?: boolean } = {}): MessageStream {
    const params = retry.message.params as Record<string, unknown>;
    const binding = { grantId: identity.grantId, method: String(retry.message.method), paramsHash: paramsHash(params) };
    const opened = typeof params.requestState === "string" ? this.sealer.open(params.requestState, binding, this.deps.timers.now()) : { ok: false as const, problem: "requestState must be a string" };
    if (!opened.ok) throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: ${opened.problem}`);
    const call = this.continuations.peek(opened.state.continuationId);
    if (call === null) throw new McpRefusal(400, ErrorCode.InvalidParams, "Invalid params: requestState names no call waiting for input (already resumed, abandoned, or from before a restart)");
    const problem = call.responsesProblem(params.inputResponses);
    if (problem !== null) throw new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: ${problem}`);
    this.continuations.take(opened.state.continuationId);
    return call.resume(retry, options.sse ?? true);
  }

  /** The user's upstream token changed: their children stop once their calls are over, and the next call starts one with the new token. */
  userTokenRotated(forgejoUserId: number): void {
    for (const [grantId, principal] of this.live) {
      if (principal.forgejoUserId === forgejoUserId) this.retire(grantId, principal, "the user's Forgejo token was refreshed");
    }
  }

  /** A token of the grant was revoked: once none is left, its child stops now, failing the calls in flight. */
  async grantRevoked(grantId: string): Promise<void> {
    this.revocationNotices++;
    const principal = this.live.get(grantId);
    if (principal === undefined || this.deps.grantIsLive === undefined || (await this.deps.grantIsLive(grantId))) return;
    await this.stop(grantId, principal, "every token of its sign-in was revoked");
  }

  /** Children with no call in flight and no listen stream open for idleTimeoutMs stop; returns how many. */
  async reapIdle(): Promise<number> {
    const now = this.deps.timers.now();
    const idle = [...this.live].filter(([, principal]) => principal.child.inFlight === 0 && principal.child.listening === 0 && now - principal.child.lastActivity >= this.deps.config.idleTimeoutMs);
    await Promise.all(idle.map(([grantId, principal]) => this.stop(grantId, principal, "the principal's child was idle for too long")));
    return idle.length;
  }

  /** Stops every child and waits until all have exited; later calls are refused. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    this.stopReaping();
    await Promise.allSettled(this.starts.values());
    this.continuations.abandonAll("the broker is shutting down");
    // Retired children too: their calls in flight fail now rather than outlive the broker's stop.
    await Promise.all([...this.running].map(([principal, grantId]) => this.stop(grantId, principal, "the broker is shutting down")));
  }

  private async start(identity: SessionIdentity): Promise<Principal> {
    const release = (await this.deps.reserveSlot?.(identity.forgejoUserId)) ?? (() => {});
    try {
      return await this.startInSlot(identity);
    } finally {
      // Started, it counts among capped(); failed, it holds nothing.
      release();
    }
  }

  private async startInSlot(identity: SessionIdentity): Promise<Principal> {
    const upstream = await this.deps.upstreamToken(identity.forgejoUserId);
    const id = randomHex(24);
    const logger = this.deps.logger.child({ principal_child: id });
    let process;
    try {
      process = this.deps.spawn({ sessionId: id, token: upstream.token });
    } catch (error) {
      if (error instanceof ChildStartError) throw new SessionStartError(error.message, error.lastStderrLine);
      throw error;
    }
    const principal: Principal = { child: null!, forgejoUserId: identity.forgejoUserId, dueTimer: null, exited: process.exited.then(() => {}), startedAt: this.deps.timers.now() };
    principal.child = new PrincipalChild(process, {
      logger,
      timers: this.deps.timers,
      requestTimeoutMs: this.deps.config.requestTimeoutMs,
      maxMessageBytes: this.deps.config.maxMessageBytes,
      grantId: identity.grantId,
      continuations: this.continuations,
      sealer: this.sealer,
      listenerCount: this.listenerCount,
      onExit: (exit) => {
        logger.warn("a principal's MCP server exited; the next call starts another", { exit_code: exit.code, signal: exit.signal });
        this.forget(identity.grantId, principal);
      },
    });
    const problem = await principal.child.initialize(this.initializeTimeoutMs);
    if (problem !== null) {
      await principal.child.close(problem);
      throw new SessionStartError(problem, (await process.exited).lastStderrLine);
    }
    // A revocation during the start found no child to stop. Asked until no revocation arrived during the
    // question, so none falls between the answer and the registration below.
    for (let asked = -1; asked !== this.revocationNotices; ) {
      asked = this.revocationNotices;
      if (this.deps.grantIsLive !== undefined && !(await this.deps.grantIsLive(identity.grantId))) {
        await principal.child.close("its sign-in was revoked while it started");
        throw new SessionRevokedError();
      }
    }
    if (this.shuttingDown) {
      await principal.child.close("the broker is shutting down");
      throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
    }
    if (upstream.expiresAt !== null) {
      // The scheduler's rule, so the next start finds the token due and gets a refreshed one.
      const now = this.deps.timers.now();
      const dueAt = refreshDueAt(now, upstream.expiresAt, { leadMs: this.deps.config.refreshLeadMs, minIntervalMs: MIN_REFRESH_INTERVAL_MS });
      const dueIn = Math.min(MAX_TIMER_MS, Math.max(0, dueAt - now));
      principal.dueTimer = this.deps.timers.setTimeout(() => this.retire(identity.grantId, principal, "the user's Forgejo token is due for a refresh"), dueIn);
    }
    this.live.set(identity.grantId, principal);
    this.running.set(principal, identity.grantId);
    void principal.exited.then(() => this.running.delete(principal));
    logger.info("principal child started", { forgejo_user_id: identity.forgejoUserId, client_id: identity.clientId, pid: process.pid });
    return principal;
  }

  /** No new calls reach it: the next one starts a new child, and this one stops once its calls are over. */
  private retire(grantId: string, principal: Principal, reason: string): void {
    this.forget(grantId, principal);
    this.deps.logger.info("principal child retiring", { reason, pid: principal.child.childPid });
    principal.child.retire(reason);
  }

  private stop(grantId: string, principal: Principal, reason: string): Promise<void> {
    this.forget(grantId, principal);
    this.deps.logger.info("principal child stopped", { reason, pid: principal.child.childPid });
    return principal.child.close(reason);
  }

  private forget(grantId: string, principal: Principal): void {
    if (principal.dueTimer !== null) this.deps.timers.clearTimeout(principal.dueTimer);
    principal.dueTimer = null;
    if (this.live.get(grantId) === principal) this.live.delete(grantId);
    const start = this.starts.get(grantId);
    if (start !== undefined) void start.then((started) => started === principal && this.starts.get(grantId) === start && this.starts.delete(grantId), () => {});
  }

  private get initializeTimeoutMs(): number {
    return this.deps.initializeTimeoutMs ?? 30_000;
  }

}
