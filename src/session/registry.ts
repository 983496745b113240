// The session registry: Mcp-Session-Id → legacy session (bound to its grant); enforces the caps over its
// sessions and other children it is told of (making room by ending the least recently used idle one), reaps idle sessions, and rotates tokens.
import type { IncomingMessage, JsonRpcMessage } from "../bridge/jsonrpc.ts";
import type { OutboundEvent } from "../bridge/message-stream.ts";
import type { SessionConfig } from "../config.ts";
import { randomHex } from "../crypto.ts";
import type { Logger } from "../log.ts";
import { noMetrics, type BrokerMetrics, type ChildExitReason } from "../observability/metrics.ts";
import type { SharedUserSlots, UserSlotVerdict } from "../replicas/user-slots.ts";
import type { SpawnChild } from "../supervisor/child.ts";
import { ChildStartError } from "../supervisor/child.ts";
import { SpawnPacer } from "../supervisor/spawn-pacer.ts";
import { RevocationWatch, type GrantIsLive } from "./revocation-watch.ts";
import { every, reapIntervalFor, type Timers } from "../supervisor/timers.ts";
import {
  drainingRefusal,
  InitializeRejectedError,
  SessionForbiddenError,
  SessionLimitError,
  SessionNotFoundError,
  SessionRevokedError,
  SessionStartError,
  UserSessionLimitError,
} from "./errors.ts";
import { LegacySession, type SessionIdentity } from "./legacy-session.ts";
import { RefreshScheduler } from "./refresh-scheduler.ts";

export type { SessionIdentity } from "./legacy-session.ts";

export interface UpstreamToken {
  token: string;
  /** Epoch milliseconds; null when Forgejo gave no expiry. */
  expiresAt: number | null;
}

/** The user's current (unsealed) upstream Forgejo token; what it throws for the client is an McpRefusal. */
export type UpstreamTokenProvider = (forgejoUserId: number) => Promise<UpstreamToken>;

/**
 * Refreshes a user's upstream token and stores the new pair before resolving; single-flight per
 * user is its job. `refused`: Forgejo said no (the user must sign in again); otherwise transient.
 */
export type UpstreamRefresher = (
  forgejoUserId: number,
) => Promise<({ ok: true } & UpstreamToken) | { ok: false; refused: boolean; reason: string }>;

/** A child the registry does not own but counts against the caps, and may end to make room (a grant's modern child). */
export interface CappedChild {
  readonly forgejoUserId: number;
  readonly inFlight: number;
  readonly lastActivity: number;
  readonly earliestRequestDeadline: number | null;
  /** Set while the child is on its way out (retired or stopped): it holds its slot until this resolves, and is no candidate for eviction. */
  readonly exiting: Promise<void> | null;
  /** Its successor took over its slot (a rotation): it runs on until its calls are over, but counts under no cap and is no candidate for eviction. */
  readonly handedOver?: boolean;
  /** Resolves once the child has exited and its slot is free. */
  evict(reason: string): Promise<void>;
}

export interface CreatedSession {
  entry: LegacySession;
  /** What the child sent on the initialize request's stream, ending with its InitializeResult. */
  events: OutboundEvent[];
}

export interface SessionRegistryDeps {
  config: SessionConfig;
  spawn: SpawnChild;
  upstreamToken: UpstreamTokenProvider;
  logger: Logger;
  timers: Timers;
  /** Spaces child starts one event-loop turn apart (default: a pacer of its own). */
  spawnPacer?: SpawnPacer;
  /** Without it, sessions keep the token they started with. */
  refresh?: UpstreamRefresher;
  /**
   * Whether a client can still act under the grant (a session lives on its grant, not on one token).
   * Asked after a revocation, and once a start is about to register its session, because a
   * revocation during the start found no session to end. Without it, every grant is live.
   */
  grantIsLive?: GrantIsLive;
  initializeTimeoutMs?: number;
  reapIntervalMs?: number;
  refreshRetryMs?: number;
  replayMaxEvents?: number;
  replayMaxBytes?: number;
  /** Child starts and exits, evictions; none recorded without it. */
  metrics?: BrokerMetrics;
  /** Told of each session's start and end (the replicas' session directory); nobody is without it. */
  lifecycle?: SessionLifecycle;
  /** Among replicas: the per-user cap counts the user's slots on the others too. Without it, this replica's alone. */
  userSlots?: SharedUserSlots;
}

/** What the registry shares with children of another kind (the principals'): its caps, which count them too, and its drain. */
export interface SharedLimits {
  /** A slot under BROKER_MAX_SESSIONS and the per-user cap for a child about to start; the function it gives frees it. */
  reserveSlot(forgejoUserId: number): Promise<() => void>;
  /** A child's process exited, freeing the slot it held (the per-user count across replicas goes down). */
  slotFreed(forgejoUserId: number): void;
  /** Whether the broker drains (the admin command's drain, or a stop under way): nothing new starts. */
  draining(): boolean;
}

/** What another replica needs to forward to a session or restore it. */
export interface StartedSession {
  grantId: string;
  /** The client's initialize request as it sent it. */
  initialize: string;
  protocolVersion: string;
  /** Epoch ms, so the other replicas' admin listing can show the session's age. */
  startedAt: number;
}

export interface SessionLifecycle {
  /**
   * Awaited before the initialize answer goes out: the client's next request may reach another replica at
   * once, which must find the session in the directory or it answers 404 and the client starts over.
   */
  started(sessionId: string, session: StartedSession): Promise<void> | void;
  /** The session is over: a client ended it, it idled out, its child died or its grant was revoked. */
  ended(sessionId: string): void;
  /** This broker shut down under the session: another replica may restore it on its next request. */
  left(sessionId: string): void;
}

const SESSION_ID = /^[0-9a-f]{48}$/;
/** A broker that is shutting down is usually back, restarted, within this long. */
const SHUTDOWN_RETRY_AFTER_S = 30;

/** Which cap made room for a new session by ending an idle one. */
export type EvictionCap = "user" | "global";

/** A session start under way, and by when its initialize is over at the latest. */
interface StartTicket {
  readonly forgejoUserId: number;
  deadline: number;
}

export class SessionRegistry {
  private readonly sessions = new Map<string, LegacySession>();
  private readonly byUser = new Map<number, Set<string>>();
  /** Starts under way: each holds a slot until its session exists or the start failed. */
  private readonly starting = new Set<StartTicket>();
  /** Ended sessions whose children are still exiting: they count against the caps until gone. */
  private readonly stopping = new Map<LegacySession, Promise<void>>();
  /** One rotation at a time per session; a second waits for the first. */
  private readonly rotations = new Map<string, Promise<void>>();
  private readonly scheduler: RefreshScheduler | null;
  private readonly pacer: SpawnPacer;
  private readonly stopReaping: () => void;
  private closed = false;
  private readonly revocations: RevocationWatch;
  /** Set by drain(): no new session or other child starts, the live ones serve on. */
  private draining = false;
  private readonly evicted: Record<EvictionCap, number> = { user: 0, global: 0 };
  private otherChildren: () => CappedChild[] = () => [];

  constructor(private readonly deps: SessionRegistryDeps) {
    const refresh = deps.refresh;
    this.pacer = deps.spawnPacer ?? new SpawnPacer();
    this.revocations = new RevocationWatch(deps.grantIsLive);
    this.scheduler =
      refresh === undefined
        ? null
        : new RefreshScheduler({
            timers: deps.timers,
            logger: deps.logger,
            leadMs: deps.config.refreshLeadMs,
            retryMs: deps.refreshRetryMs ?? 30_000,
            onDue: (forgejoUserId) => this.refreshUser(forgejoUserId, refresh),
          });
    this.stopReaping = every(deps.timers, deps.reapIntervalMs ?? reapIntervalFor(deps.config.idleTimeoutMs), () => void this.reapIdle());
  }

  get size(): number {
    return this.sessions.size;
  }

  /** Whether this registry holds the session (whoever it belongs to). */
  holds(id: string): boolean {
    return this.sessions.has(id);
  }

  sessionsOf(forgejoUserId: number): string[] {
    return [...(this.byUser.get(forgejoUserId) ?? [])];
  }

  /** When the user's next upstream refresh is due (null: none scheduled). */
  refreshDueAt(forgejoUserId: number): number | null {
    return this.scheduler?.dueAt(forgejoUserId) ?? null;
  }

  /**
   * Starts a child with the user's upstream token, sends it the client's initialize and waits for
   * the answer; only then does the session exist. At a cap, the least recently used session (or other
   * child, see shareLimits) with no request in flight is ended to make room (the user's own at the per-user cap, anyone's at the
   * broker-wide one). Throws SessionLimitError, UserSessionLimitError (each when every session in
   * the way is busy), SessionStartError, InitializeRejectedError, or what the token provider throws.
   */
  async create(identity: SessionIdentity, initialize: IncomingMessage, restoredId?: string): Promise<CreatedSession> {
    const ticket = await this.takeSlot(identity.forgejoUserId);
    try {
      return await this.start(identity, initialize, ticket, restoredId);
    } finally {
      this.starting.delete(ticket);
      this.slotsChanged(identity.forgejoUserId);
    }
  }

  /**
   * Starts again, under its id, a session whose replica is gone: a child with the token of `identity`
   * (the live request's user), the client's stored initialize, then the notifications/initialized the
   * client sent back then. Throws as create does.
   */
  async restore(id: string, identity: SessionIdentity, initialize: IncomingMessage): Promise<LegacySession> {
    const { entry } = await this.create(identity, initialize, id);
    const initialized = { jsonrpc: "2.0", method: "notifications/initialized" } as const;
    entry.send({ raw: JSON.stringify(initialized), message: initialized }, "notification");
    return entry;
  }

  /**
   * The caps count `children` too (and may end an idle one), besides the registry's sessions; returns what
   * those children's owner needs to take and free their slots by the same rules, and to see a drain.
   */
  shareLimits(children: () => CappedChild[]): SharedLimits {
    this.otherChildren = children;
    return { reserveSlot: (user) => this.reserveSlot(user), slotFreed: (user) => this.slotsChanged(user), draining: () => this.draining };
  }

  /**
   * A slot for a child of another kind about to start (see shareLimits), taken by the same rules as a
   * session's; call the function returned once the child counts among shareLimits' children, or failed to start.
   * Throws SessionLimitError or UserSessionLimitError.
   */
  async reserveSlot(forgejoUserId: number): Promise<() => void> {
    const ticket = await this.takeSlot(forgejoUserId);
    return () => {
      this.starting.delete(ticket);
      this.slotsChanged(forgejoUserId);
    };
  }

  /** Waits for, or makes, room under both caps and holds it with a start ticket. */
  private async takeSlot(user: number): Promise<StartTicket> {
    const { maxSessions, maxSessionsPerUser } = this.deps.config;
    // A child of an ended session still holds its slot for the moment it takes to exit; wait for
    // those rather than refuse a client that closed a session to open another.
    let waited = false;
    for (;;) {
      if (this.closed) throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
      if (this.draining) throw drainingRefusal("sessions");
      let ofUser = this.holdingSlots(user) >= maxSessionsPerUser;
      const overall = this.holdingSlots(null) >= maxSessions;
      /** The user's slots on other replicas, when they are what the user's cap is reached by. */
      let elsewhere = 0;
      if (!overall && !ofUser) {
        const ticket: StartTicket = { forgejoUserId: user, deadline: this.deps.timers.now() + this.initializeTimeoutMs };
        this.starting.add(ticket);
        const shared = await this.takeShared(user);
        if (shared.taken) return ticket;
        this.starting.delete(ticket);
        // Over the cap only with the others' slots: this replica makes room among its own, or refuses.
        ofUser = true;
        elsewhere = shared.elsewhere;
      }
      // Checked and taken in one synchronous step, so two concurrent creates never pick the same one.
      const cap: EvictionCap = ofUser ? "user" : "global";
      const victim = this.leastRecentlyUsedIdle(ofUser ? user : null);
      if (victim !== null) {
        await this.evict(victim, cap);
        continue;
      }
      const exiting = [...this.stopping.values(), ...this.otherChildren().flatMap((other) => (other.handedOver ? [] : (other.exiting ?? [])))];
      if (!waited && exiting.length > 0) {
        waited = true;
        await Promise.all(exiting);
        continue;
      }
      const retryAfterS = this.secondsUntilASlotFrees(ofUser ? user : null);
      if (ofUser && elsewhere > 0) {
        throw new UserSessionLimitError(
          `you have ${maxSessionsPerUser} open sessions, the most allowed, ${elsewhere} of them on other replicas of this broker, and none here can be ended to make room; one frees within ${retryAfterS} s at the latest`,
          retryAfterS,
        );
      }
      if (ofUser) {
        throw new UserSessionLimitError(
          `you have ${maxSessionsPerUser} open sessions, the most allowed, and each has a request in flight; one frees within ${retryAfterS} s at the latest`,
          retryAfterS,
        );
      }
      throw new SessionLimitError(
        `the broker is at its limit of ${maxSessions} sessions, and each has a request in flight; one frees within ${retryAfterS} s at the latest`,
        retryAfterS,
      );
    }
  }

  /**
   * The user's slot across replicas, this replica's count (the new start's ticket included) written with it.
   * Redis not answering never refuses a start: the cap falls back to this replica's count, and that is logged.
   */
  private async takeShared(user: number): Promise<UserSlotVerdict> {
    if (this.deps.userSlots === undefined) return { taken: true };
    try {
      return await this.deps.userSlots.take(user, this.holdingSlots(user), this.deps.config.maxSessionsPerUser);
    } catch (error) {
      this.deps.logger.warn("could not count the user's sessions on other replicas; the per-user cap counts this replica's only", {
        forgejo_user_id: user,
        error: error instanceof Error ? error.message : String(error),
      });
      return { taken: true };
    }
  }

  /** The user's count on this replica changed (a start over, a session or child gone): the other replicas see it. */
  private slotsChanged(user: number): void {
    this.deps.userSlots?.update(user, this.holdingSlots(user));
  }

  /** Every live session (for the admin command's listing). */
  list(): LegacySession[] {
    return [...this.sessions.values()];
  }

  /**
   * From now on no session or other child (see reserveSlot) starts: each start answers 503 with Retry-After,
   * while the live ones serve on until they end. For an operator who is about to stop this broker.
   */
  drain(): void {
    this.draining = true;
  }

  /** Whether drain() was called: /healthz then tells the load balancer to send no more requests here. */
  get isDraining(): boolean {
    return this.draining;
  }

  /** Children running or about to: sessions, other children (see shareLimits, handed-over ones too), starts under way and children still exiting. */
  get childrenHoldingSlots(): number {
    return this.holdingSlots(null, true);
  }

  /** Sessions ended to make room for a new one, by the cap that was reached (read-only copy). */
  get evictions(): Readonly<Record<EvictionCap, number>> {
    return { ...this.evicted };
  }

  /** The session for a request; counts as activity. Throws SessionNotFoundError (404), SessionForbiddenError (403). */
  get(id: string, identity: SessionIdentity): LegacySession {
    const entry = SESSION_ID.test(id) ? this.sessions.get(id) : undefined;
    if (entry === undefined) throw new SessionNotFoundError();
    if (entry.binding.grantId !== identity.grantId) throw new SessionForbiddenError();
    entry.touch();
    return entry;
  }

  /**
   * Ends a session: from now on its id is unknown and its child has been told to stop; the child's
   * exit is awaited in the background (shutdown waits for it). False when there is no such session.
   */
  delete(id: string, reason = "the session was deleted"): boolean {
    const entry = this.sessions.get(id);
    if (entry === undefined) return false;
    void this.drop(entry, reason, {}, "deleted");
    return true;
  }

  /**
   * Moves each of the user's sessions to a new child started with `token`, under the same session
   * id; a session whose new child fails keeps its old one (and is logged). Resolves when all tried.
   */
  async rotateUser(forgejoUserId: number, token: string): Promise<{ moved: number; failed: number }> {
    const results = await Promise.all(this.sessionsOf(forgejoUserId).map((id) => this.rotateSession(id, token)));
    return { moved: results.filter(Boolean).length, failed: results.filter((ok) => !ok).length };
  }

  /** Ends every session of the user, e.g. when Forgejo refused to refresh their token. */
  async endUser(forgejoUserId: number, reason = "the sign-in to Forgejo has ended"): Promise<void> {
    this.scheduler?.unwatch(forgejoUserId);
    await Promise.all(
      this.sessionsOf(forgejoUserId).map((id) => {
        const entry = this.sessions.get(id);
        return entry === undefined ? undefined : this.drop(entry, reason, {}, "revoked");
      }),
    );
  }

  /**
   * A token of the grant was revoked: once no token of it is left, its sessions end, so a revoked
   * sign-in does not leave a child holding the user's Forgejo token until the idle reap.
   */
  async grantRevoked(grantId: string): Promise<void> {
    this.revocations.noticed();
    if (!this.hasGrant(grantId) || !(await this.revocations.isRevoked(grantId))) return;
    const ended = [...this.sessions.values()].filter((entry) => entry.binding.grantId === grantId);
    await Promise.all(ended.map((entry) => this.drop(entry, "every token of its sign-in was revoked", {}, "revoked")));
  }

  /** Whether any live session is bound to the grant. */
  hasGrant(grantId: string): boolean {
    for (const entry of this.sessions.values()) if (entry.binding.grantId === grantId) return true;
    return false;
  }

  /** Drops sessions with no open stream and no request for idleTimeoutMs; returns how many. */
  async reapIdle(): Promise<number> {
    const now = this.deps.timers.now();
    const idle = [...this.sessions.values()].filter(
      (entry) =>
        entry.activeStreams === 0 && now - entry.lastActivity >= this.deps.config.idleTimeoutMs,
    );
    await Promise.all(idle.map((entry) => this.drop(entry, "the session was idle for too long", {}, "idle")));
    return idle.length;
  }

  /**
   * Resolves once no session has a request in flight: a stopping broker waits for this (within a bound)
   * before it stops the children, so the calls they were answering complete.
   */
  async callsSettled(): Promise<void> {
    const busy = () => [...this.sessions.values()].filter((entry) => entry.inFlight > 0);
    for (let waiting = busy(); waiting.length > 0; waiting = busy()) await Promise.all(waiting.map((entry) => entry.callsSettled()));
  }

  /** Stops every child and waits until all have exited; later creates are refused. */
  async shutdown(): Promise<void> {
    this.closed = true;
    this.stopReaping();
    this.scheduler?.close();
    await Promise.all([...this.sessions.values()].map((entry) => this.drop(entry, "the broker is shutting down", {}, "shutdown")));
    await Promise.all(this.stopping.values());
  }

  private async start(identity: SessionIdentity, initialize: IncomingMessage, ticket: StartTicket, restoredId?: string): Promise<CreatedSession> {
    const upstream = await this.deps.upstreamToken(identity.forgejoUserId);
    const id = restoredId ?? randomHex(24);
    const logger = this.deps.logger.child({ session: id });
    await this.pacer.turn();
    // Shutdown may have begun while this start waited for its turn: no new child once it has.
    if (this.closed) throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
    const started = this.metrics.childStarting();
    let child;
    try {
      child = this.deps.spawn({ sessionId: id, token: upstream.token });
    } catch (error) {
      started("failed");
      if (error instanceof ChildStartError) throw new SessionStartError(error.message, error.lastStderrLine);
      throw error;
    }
    const session = new LegacySession(child, {
      id,
      binding: identity,
      logger,
      timers: this.deps.timers,
      requestTimeoutMs: this.deps.config.requestTimeoutMs,
      maxMessageBytes: this.deps.config.maxMessageBytes,
      replayMaxEvents: this.deps.replayMaxEvents,
      replayMaxBytes: this.deps.replayMaxBytes,
      onChildExit: (exit) => {
        const entry = this.sessions.get(id);
        if (entry !== session) return;
        logger.warn("the session's MCP server exited; session dropped", { exit_code: exit.code, signal: exit.signal });
        void this.drop(session, "the MCP server exited", {}, "crashed");
      },
    });

    const initializeTimeoutMs = this.initializeTimeoutMs;
    ticket.deadline = this.deps.timers.now() + initializeTimeoutMs;
    const { events, timedOut } = await this.initialize(session, initialize, initializeTimeoutMs);
    const answer = events.at(-1);
    started(answer === undefined || answer.origin === "broker" || "error" in answer.message ? "failed" : "ok");
    if (answer === undefined || answer.origin === "broker") {
      await session.close();
      const exit = await child.exited;
      throw new SessionStartError(
        timedOut
          ? `the MCP server did not answer initialize within ${Math.round(initializeTimeoutMs / 1000)} s`
          : "the MCP server exited before answering initialize",
        exit.lastStderrLine,
      );
    }
    if ("error" in answer.message) {
      await session.close();
      throw new InitializeRejectedError(events);
    }
    if (!(await this.revocations.liveAfterStart(identity.grantId))) {
      this.metrics.childExited("revoked");
      await session.close("its sign-in was revoked while it started");
      throw new SessionRevokedError();
    }
    if (this.closed) {
      this.metrics.childExited("shutdown");
      await session.close("the broker is shutting down");
      throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
    }

    session.touch();
    this.sessions.set(id, session);
    let ids = this.byUser.get(identity.forgejoUserId);
    if (ids === undefined) this.byUser.set(identity.forgejoUserId, (ids = new Set()));
    ids.add(id);
    this.scheduler?.watch(identity.forgejoUserId, upstream.expiresAt);
    await this.deps.lifecycle?.started(id, { grantId: identity.grantId, initialize: initialize.raw, protocolVersion: negotiatedVersion(answer.message), startedAt: session.startedAt });
    logger.info("session started", { forgejo_user_id: identity.forgejoUserId, client_id: identity.clientId, pid: child.pid });
    return { entry: session, events };
  }

  /** Collects the initialize stream; a silent child gets initializeTimeoutMs, not the long request timeout. */
  private async initialize(
    session: LegacySession,
    initialize: IncomingMessage,
    timeoutMs: number,
  ): Promise<{ events: OutboundEvent[]; timedOut: boolean }> {
    const stream = session.request(initialize);
    let timedOut = false;
    const timer = this.deps.timers.setTimeout(() => {
      timedOut = true;
      void session.close("the MCP server did not answer initialize in time");
    }, timeoutMs);
    const events: OutboundEvent[] = [];
    try {
      for (let event = await stream.next(); event !== null; event = await stream.next()) events.push(event);
    } finally {
      this.deps.timers.clearTimeout(timer);
    }
    return { events, timedOut };
  }

  private rotateSession(id: string, token: string): Promise<boolean> {
    const previous = this.rotations.get(id) ?? Promise.resolve();
    const attempt = previous.then(async () => {
      await this.pacer.turn();
      const entry = this.sessions.get(id);
      if (entry === undefined) return false;
      const started = this.metrics.childStarting();
      try {
        const child = this.deps.spawn({ sessionId: id, token });
        await entry.replaceChild(child, this.initializeTimeoutMs);
        started("ok");
        this.metrics.childExited("rotated");
        this.deps.logger.info("session moved to a child with the refreshed token", { session: id, pid: child.pid });
        return true;
      } catch (error) {
        started("failed");
        this.deps.logger.error("could not move a session to a child with the refreshed token; it keeps the old one", {
          session: id,
          error: error instanceof Error ? error.message : String(error),
        });
        return false;
      }
    });
    const settled = attempt.then(() => undefined);
    this.rotations.set(id, settled);
    void settled.then(() => {
      if (this.rotations.get(id) === settled) this.rotations.delete(id);
    });
    return attempt;
  }

  private async refreshUser(forgejoUserId: number, refresh: UpstreamRefresher): Promise<number | null> {
    if (this.sessionsOf(forgejoUserId).length === 0) return null;
    const outcome = await refresh(forgejoUserId);
    if (outcome.ok) {
      await this.rotateUser(forgejoUserId, outcome.token);
      return outcome.expiresAt;
    }
    if (!outcome.refused) throw new Error(outcome.reason);
    this.deps.logger.warn("Forgejo refused to refresh the user's token; ending their sessions", {
      forgejo_user_id: forgejoUserId,
      reason: outcome.reason,
    });
    await this.endUser(forgejoUserId, "Forgejo refused to refresh the sign-in");
    return null;
  }

  private async drop(entry: LegacySession, reason: string, fields: Record<string, unknown>, exit: ChildExitReason): Promise<void> {
    if (this.sessions.get(entry.id) === entry) {
      this.metrics.childExited(exit);
      this.sessions.delete(entry.id);
      const ids = this.byUser.get(entry.binding.forgejoUserId);
      ids?.delete(entry.id);
      if (ids !== undefined && ids.size === 0) {
        this.byUser.delete(entry.binding.forgejoUserId);
        this.scheduler?.unwatch(entry.binding.forgejoUserId);
      }
      if (exit === "shutdown") this.deps.lifecycle?.left(entry.id);
      else this.deps.lifecycle?.ended(entry.id);
      this.deps.logger.info("session ended", { session: entry.id, reason, ...fields });
    }
    const known = this.stopping.get(entry);
    if (known !== undefined) return known;
    const stopped = entry.close(reason).finally(() => {
      this.stopping.delete(entry);
      this.slotsChanged(entry.binding.forgejoUserId);
    });
    this.stopping.set(entry, stopped);
    return stopped;
  }

  private get metrics(): BrokerMetrics {
    return this.deps.metrics ?? noMetrics;
  }

  private get initializeTimeoutMs(): number {
    return this.deps.initializeTimeoutMs ?? 30_000;
  }

  /** Slots taken by the user's (null: everyone's) sessions and other children, starts under way and children still exiting. */
  private holdingSlots(forgejoUserId: number | null, withHandedOver = false): number {
    const mine = (owner: number) => forgejoUserId === null || owner === forgejoUserId;
    let count = forgejoUserId === null ? this.sessions.size : (this.byUser.get(forgejoUserId)?.size ?? 0);
    for (const other of this.otherChildren()) if (mine(other.forgejoUserId) && (withHandedOver || !other.handedOver)) count++;
    for (const ticket of this.starting) if (mine(ticket.forgejoUserId)) count++;
    for (const entry of this.stopping.keys()) if (mine(entry.binding.forgejoUserId)) count++;
    return count;
  }

  /** The user's (null: anyone's) session or other child with no request in flight that was used longest ago. */
  private leastRecentlyUsedIdle(forgejoUserId: number | null): LegacySession | CappedChild | null {
    const ids = forgejoUserId === null ? this.sessions.keys() : (this.byUser.get(forgejoUserId) ?? []);
    const candidates: (LegacySession | CappedChild)[] = [...ids].map((id) => this.sessions.get(id)!);
    for (const other of this.otherChildren()) if (forgejoUserId === null || other.forgejoUserId === forgejoUserId) candidates.push(other);
    let oldest: LegacySession | CappedChild | null = null;
    let oldestUse = Infinity;
    for (const entry of candidates) {
      if (entry.inFlight > 0 || ("exiting" in entry && (entry.exiting !== null || entry.handedOver))) continue;
      const lastUse = entry.lastActivity;
      if (lastUse < oldestUse) [oldest, oldestUse] = [entry, lastUse];
    }
    return oldest;
  }

  /** Ends an idle session or other child to make room; resolves once its child has exited and its slot is free. */
  private evict(entry: LegacySession | CappedChild, cap: EvictionCap): Promise<void> {
    this.evicted[cap]++;
    this.metrics.sessionEvicted(cap);
    const idleS = Math.round((this.deps.timers.now() - entry.lastActivity) / 1000);
    const limit = cap === "user" ? `the user's limit of ${this.deps.config.maxSessionsPerUser}` : `the broker's limit of ${this.deps.config.maxSessions}`;
    const reason = `evicted: a new session needed a slot at ${limit} sessions, and this was the least recently used one with no request in flight`;
    if (!(entry instanceof LegacySession)) {
      this.deps.logger.info("a grant's child ended to make room", { reason, cap, forgejo_user_id: entry.forgejoUserId, idle_s: idleS });
      return entry.evict(reason);
    }
    return this.drop(entry, reason, { cap, forgejo_user_id: entry.binding.forgejoUserId, idle_s: idleS }, "evicted");
  }

  /**
   * When every session in the way is busy: the seconds until the first of them can make room — a
   * child exiting now, a start over, or a request in flight answered or timed out — at least 1.
   */
  private secondsUntilASlotFrees(forgejoUserId: number | null): number {
    const now = this.deps.timers.now();
    const mine = (owner: number) => forgejoUserId === null || owner === forgejoUserId;
    let earliest = [...this.stopping.keys()].some((entry) => mine(entry.binding.forgejoUserId)) ? now : Infinity;
    for (const ticket of this.starting) if (mine(ticket.forgejoUserId)) earliest = Math.min(earliest, ticket.deadline);
    for (const entry of this.sessions.values()) {
      const deadline = mine(entry.binding.forgejoUserId) ? entry.earliestRequestDeadline : null;
      if (deadline !== null) earliest = Math.min(earliest, deadline);
    }
    for (const other of this.otherChildren()) {
      if (!mine(other.forgejoUserId) || other.handedOver) continue;
      if (other.exiting !== null) earliest = now;
      else if (other.earliestRequestDeadline !== null) earliest = Math.min(earliest, other.earliestRequestDeadline);
    }
    if (earliest === Infinity) earliest = now + this.deps.config.requestTimeoutMs;
    return Math.max(1, Math.ceil((earliest - now) / 1000));
  }

}

/** The protocol version the child's InitializeResult names ("" when it names none). */
function negotiatedVersion(answer: JsonRpcMessage): string {
  const result = "result" in answer ? answer.result : undefined;
  const version = typeof result === "object" && result !== null ? (result as { protocolVersion?: unknown }).protocolVersion : undefined;
  return typeof version === "string" ? version : "";
}
