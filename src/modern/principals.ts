// One child per principal (grant) for modern callers: started on the grant's first request (single-
// flight) in a slot under the session caps, in the era its command speaks (probed once), reaped when idle, retired when the user's token
// rotates or is due, stopped when the grant ends; an MRTR retry resumes its call on whichever of them holds it.
import { ErrorCode, type IncomingMessage } from "../bridge/jsonrpc.ts";
import type { MessageStream } from "../bridge/message-stream.ts";
import type { ChildEraSetting, SessionConfig } from "../config.ts";
import { randomHex } from "../crypto.ts";
import type { Logger } from "../log.ts";
import { noMetrics, type BrokerMetrics, type ChildExitReason } from "../observability/metrics.ts";
import { drainingRefusal, McpRefusal, SessionLimitError, SessionRevokedError, SessionStartError } from "../session/errors.ts";
import type { CappedChild, SessionIdentity, SharedLimits, UpstreamTokenProvider } from "../session/registry.ts";
import { RevocationWatch, type GrantIsLive } from "../session/revocation-watch.ts";
import { ChildStartError, type SpawnChild } from "../supervisor/child.ts";
import { every, reapIntervalFor, type TimerHandle, type Timers } from "../supervisor/timers.ts";
import { MIN_REFRESH_INTERVAL_MS, refreshDueAt } from "../upstream/refresh-timing.ts";
import { ChildEras, PROBE_TIMEOUT_MS, type ChildEra, probeVerdict, runProbe, type ProbeOutcome } from "./child-era.ts";
import { Continuations } from "./continuations.ts";
import { LegacyPrincipalChild } from "./legacy-child.ts";
import type { ModernCall } from "./modern-call.ts";
import { ModernPrincipalChild } from "./modern-child.ts";
import type { PrincipalChild } from "./principal-child.ts";
import { paramsHash, RequestStateSealer } from "./request-state.ts";
import { ListenerCount } from "./subscriptions.ts";

export interface PrincipalChildrenDeps {
  config: SessionConfig;
  spawn: SpawnChild;
  /** Which era the children speak: the operator's BROKER_CHILD_ERA, probed per `childCommand` in auto. */
  childEra: ChildEraSetting;
  /** The command `spawn` starts, which the era verdict is cached for. */
  childCommand: string;
  /** How long a probed child may stay silent before it counts as legacy. */
  probeTimeoutMs?: number;
  upstreamToken: UpstreamTokenProvider;
  logger: Logger;
  timers: Timers;
  /**
   * The legacy registry's caps, which count `capped()` too, and its drain (registry.shareLimits). While it
   * drains no new call starts, neither here nor on a new child; the calls in flight go on, and so does a
   * caller's retry of a call parked here. Without it, no cap and no drain.
   */
  limits?: SharedLimits;
  /** Whether a client can still act under the grant; without it, every grant is live. */
  grantIsLive?: GrantIsLive;
  initializeTimeoutMs?: number;
  reapIntervalMs?: number;
  /** How long a caller has to retry after an input_required result; 10 minutes by default. */
  continuationDeadlineMs?: number;
  /** Child starts and exits, MRTR; none recorded without it. */
  metrics?: BrokerMetrics;
  /** Told when a child starts serving and once its process has exited, for whatever reason (the Redis principal directory). */
  lifecycle?: { running(entry: PrincipalChildEntry): void; exited(entry: PrincipalChildEntry): void };
  /** Among replicas: the requestState key they share and this replica's id, which each continuation's state names. */
  sharedStates?: { key: Uint8Array; replicaId: string };
}

interface Principal {
  child: PrincipalChild;
  identity: SessionIdentity;
  forgejoUserId: number;
  /** Its successor is starting (make before break): it serves until then. */
  replacing: boolean;
  /** The user's token rotated while it started: it holds a token already replaced. */
  staleToken: boolean;
  /** Settles once its process has exited: until then it holds a slot under the caps, serving or not. */
  exited: Promise<void>;
  /** Retires the child when its token is due for a refresh. */
  dueTimer: TimerHandle | null;
  startedAt: number;
  /** Why it ended, once it has been told to (counted once, however many ways end it). */
  ended: ChildExitReason | null;
}

/** A principal's child as the admin command lists it. */
export interface PrincipalChildEntry {
  grantId: string;
  forgejoUserId: number;
  clientId: string;
  /** The era the child itself speaks. */
  childEra: ChildEra;
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
  private readonly revocations: RevocationWatch;
  /** Calls waiting for their callers' retries, whichever child (serving or retiring) holds them. */
  readonly continuations: Continuations<ModernCall>;
  private readonly sealer: RequestStateSealer;
  /** The listen streams open on every child. */
  private readonly listenerCount = new ListenerCount();
  /** Children starting to replace a serving one: shutdown waits for them too. */
  private readonly replacements = new Set<Promise<void>>();
  /** How often each user's token has rotated, to tell a child started with a token replaced meanwhile. */
  private readonly rotations = new Map<number, number>();
  private readonly eras: ChildEras;
  private readonly metrics: BrokerMetrics;

  constructor(private readonly deps: PrincipalChildrenDeps) {
    this.eras = new ChildEras({ setting: deps.childEra, timers: deps.timers });
    this.revocations = new RevocationWatch(deps.grantIsLive);
    this.sealer = deps.sharedStates === undefined ? new RequestStateSealer() : new RequestStateSealer(deps.sharedStates.key, deps.sharedStates.replicaId);
    const metrics = (this.metrics = deps.metrics ?? noMetrics);
    this.continuations = new Continuations({
      observe: (result) => metrics.mrtr(result),
      timers: deps.timers,
      deadlineMs: this.continuationDeadlineMs,
      maxEntries: MAX_CONTINUATIONS,
    });
    this.stopReaping = every(deps.timers, deps.reapIntervalMs ?? reapIntervalFor(deps.config.idleTimeoutMs), () => void this.reapIdle());
  }

  /** How many principal children are serving. */
  get size(): number {
    return this.live.size;
  }

  /**
   * Every child with a process as the caps see them: a serving one may be evicted (stopped now); one on its way out holds its slot until it has exited.
   * One being replaced has handed its slot over to its successor, so a rotation at a cap of one evicts nobody.
   */
  capped(): CappedChild[] {
    return [...this.running].map(([principal, grantId]) => ({
      forgejoUserId: principal.forgejoUserId,
      // A child with listeners is not idle, so not the one to make room.
      inFlight: principal.child.inFlight + principal.child.listening,
      lastActivity: principal.child.lastActivity,
      earliestRequestDeadline: principal.child.earliestRequestDeadline,
      exiting: this.live.get(grantId) === principal ? null : principal.exited,
      handedOver: principal.replacing,
      evict: (reason) => this.stop(grantId, principal, reason, "evicted"),
    }));
  }

  /** Every child with a process, serving or on its way out (for the admin command's listing). */
  list(): PrincipalChildEntry[] {
    return [...this.running].map(([principal, grantId]) => this.entryOf(principal, grantId));
  }

  private entryOf(principal: Principal, grantId: string): PrincipalChildEntry {
    const { forgejoUserId, identity, child, startedAt } = principal;
    return { grantId, forgejoUserId, clientId: identity.clientId, childEra: child instanceof ModernPrincipalChild ? "modern" : "legacy", child, startedAt, serving: this.live.get(grantId) === principal };
  }

  /** The grant's child serving now, if any (for tests and logs). */
  childOf(grantId: string): PrincipalChild | null {
    return this.live.get(grantId)?.child ?? null;
  }

  /**
   * The grant's serving child, started with the user's upstream token and initialized on the first call.
   * Throws SessionStartError, SessionRevokedError, SessionLimitError (shutting down or draining: a new call
   * belongs on another replica), or what the token provider throws.
   */
  async childFor(identity: SessionIdentity): Promise<PrincipalChild> {
    for (;;) {
      if (this.shuttingDown) throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
      if (this.deps.limits?.draining() === true) throw drainingRefusal("calls");
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
   * the child's requests answered from inputResponses; a call held by another replica that is gone runs again here. Throws McpRefusal 400 -32602, with nothing sent to
   * the child, for a state that is forged, another grant's, expired, already used or for other method or params.
   */
  async resume(identity: SessionIdentity, retry: IncomingMessage, options: { sse?: boolean } = {}): Promise<MessageStream> {
    const params = retry.message.params as Record<string, unknown>;
    const opened = this.openRetry(identity, retry);
    if (!opened.ok) throw this.retryRefused(opened.problem);
    if (opened.state.childState !== undefined) {
      // A modern child's own state: the retry goes to the grant's child with it in place of the broker's seal.
      const message = { ...retry.message, params: { ...params, requestState: opened.state.childState } };
      return (await this.childFor(identity)).call({ raw: JSON.stringify(message), message }, options);
    }
    if (this.heldElsewhere(opened.state.holder)) return this.rerun(identity, retry, opened.state.asked ?? [], options);
    const call = this.continuations.peek(opened.state.continuationId);
    if (call === null) throw this.retryRefused("requestState names no call waiting for input (already resumed, abandoned, or from before a restart)");
    const problem = call.responsesProblem(params.inputResponses);
    if (problem !== null) throw this.retryRefused(problem);
    this.continuations.take(opened.state.continuationId);
    this.metrics.mrtr("resumed");
    return call.resume(retry, options.sse ?? true);
  }

  /**
   * The replica holding the continuation a retry's requestState names, when that is another replica (to
   * forward the retry to); null when it is this one, or the state is a child's own, or not genuine (resume refuses it).
   */
  holderElsewhere(identity: SessionIdentity, retry: IncomingMessage): string | null {
    const opened = this.openRetry(identity, retry);
    return opened.ok && opened.state.childState === undefined && this.heldElsewhere(opened.state.holder) ? opened.state.holder! : null;
  }

  /** The user's upstream token changed: each of their children is replaced by one with the new token (make before break). */
  userTokenRotated(forgejoUserId: number): void {
    this.rotations.set(forgejoUserId, (this.rotations.get(forgejoUserId) ?? 0) + 1);
    for (const [grantId, principal] of this.live) {
      if (principal.forgejoUserId === forgejoUserId) this.replace(grantId, principal, "the user's Forgejo token was refreshed");
    }
  }

  /** A token of the grant was revoked: once none is left, its child stops now, failing the calls in flight. */
  async grantRevoked(grantId: string): Promise<void> {
    this.revocations.noticed();
    const principal = this.live.get(grantId);
    if (principal === undefined || !(await this.revocations.isRevoked(grantId))) return;
    await this.stop(grantId, principal, "every token of its sign-in was revoked", "revoked");
  }

  /** Children with no call in flight and no listen stream open for idleTimeoutMs stop; returns how many. */
  async reapIdle(): Promise<number> {
    const now = this.deps.timers.now();
    const idle = [...this.live].filter(([, principal]) => principal.child.inFlight === 0 && principal.child.listening === 0 && now - principal.child.lastActivity >= this.deps.config.idleTimeoutMs);
    await Promise.all(idle.map(([grantId, principal]) => this.stop(grantId, principal, "the principal's child was idle for too long", "idle")));
    return idle.length;
  }

  /**
   * Resolves once no caller's call runs on any child (calls parked for their caller's retry and listen
   * streams aside): a stopping broker waits for this, within its grace, before shutdown cuts what is left.
   */
  async callsSettled(): Promise<void> {
    // A child starting now is about to take the call that started it.
    await Promise.allSettled([...this.starts.values(), ...this.replacements]);
    // A retry that resumes a parked call makes it run again: asked until no child has a call running.
    const busy = () => [...this.running.keys()].filter((principal) => principal.child.runningCalls > 0);
    for (let waiting = busy(); waiting.length > 0; waiting = busy()) await Promise.all(waiting.map((principal) => principal.child.callsSettled()));
  }

  /** Stops every child and waits until all have exited; later calls are refused. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    this.stopReaping();
    await Promise.allSettled([...this.starts.values(), ...this.replacements]);
    this.continuations.abandonAll("the broker is shutting down");
    // Retired children too: their calls in flight fail now rather than outlive the broker's stop.
    await Promise.all([...this.running].map(([principal, grantId]) => this.stop(grantId, principal, "the broker is shutting down", "shutdown")));
  }

  /** A grant's first child (or the next after one went): it serves once started. */
  private async start(identity: SessionIdentity): Promise<Principal> {
    const principal = await this.startReserved(identity);
    this.serve(identity.grantId, principal);
    return principal;
  }

  private async startReserved(identity: SessionIdentity): Promise<Principal> {
    const release = (await this.deps.limits?.reserveSlot(identity.forgejoUserId)) ?? (() => {});
    try {
      return await this.startInSlot(identity);
    } finally {
      // Started, it counts among capped(); failed, it holds nothing.
      release();
    }
  }

  private async startInSlot(identity: SessionIdentity): Promise<Principal> {
    const rotationsBefore = this.rotations.get(identity.forgejoUserId) ?? 0;
    const upstream = await this.deps.upstreamToken(identity.forgejoUserId);
    const verdict = await this.eras.verdictFor(this.deps.childCommand, () => this.probe(upstream.token));
    if (verdict.era === "unsupported") throw new SessionStartError(verdict.why, null);
    const id = randomHex(24);
    const logger = this.deps.logger.child({ principal_child: id });
    const started = this.metrics.childStarting();
    let process;
    try {
      process = this.deps.spawn({ sessionId: id, token: upstream.token });
    } catch (error) {
      started("failed");
      if (error instanceof ChildStartError) throw new SessionStartError(error.message, error.lastStderrLine);
      throw error;
    }
    const principal: Principal = { child: null!, identity, forgejoUserId: identity.forgejoUserId, replacing: false, staleToken: false, dueTimer: null, exited: process.exited.then(() => {}), startedAt: this.deps.timers.now(), ended: null };
    const ChildOfEra = verdict.era === "modern" ? ModernPrincipalChild : LegacyPrincipalChild;
    principal.child = new ChildOfEra(process, {
      logger,
      timers: this.deps.timers,
      requestTimeoutMs: this.deps.config.requestTimeoutMs,
      maxMessageBytes: this.deps.config.maxMessageBytes,
      grantId: identity.grantId,
      continuations: this.continuations,
      continuationDeadlineMs: this.continuationDeadlineMs,
      sealer: this.sealer,
      listenerCount: this.listenerCount,
      onExit: (exit) => {
        logger.warn("a principal's MCP server exited; the next call starts another", { exit_code: exit.code, signal: exit.signal });
        this.ended(principal, "crashed");
        this.forget(identity.grantId, principal);
      },
    });
    const problem = await principal.child.start(this.initializeTimeoutMs);
    started(problem === null ? "ok" : "failed");
    if (problem !== null) {
      await principal.child.close(problem);
      throw new SessionStartError(problem, (await process.exited).lastStderrLine);
    }
    if (!(await this.revocations.liveAfterStart(identity.grantId))) {
      this.ended(principal, "revoked");
      await principal.child.close("its sign-in was revoked while it started");
      throw new SessionRevokedError();
    }
    if (this.shuttingDown) {
      this.ended(principal, "shutdown");
      await principal.child.close("the broker is shutting down");
      throw new SessionLimitError("the broker is shutting down", SHUTDOWN_RETRY_AFTER_S);
    }
    if (upstream.expiresAt !== null) {
      // The scheduler's rule, so the next start finds the token due and gets a refreshed one.
      const now = this.deps.timers.now();
      const dueAt = refreshDueAt(now, upstream.expiresAt, { leadMs: this.deps.config.refreshLeadMs, minIntervalMs: MIN_REFRESH_INTERVAL_MS });
      const dueIn = Math.min(MAX_TIMER_MS, Math.max(0, dueAt - now));
      principal.dueTimer = this.deps.timers.setTimeout(() => this.replace(identity.grantId, principal, "the user's Forgejo token is due for a refresh"), dueIn);
    }
    principal.staleToken = (this.rotations.get(identity.forgejoUserId) ?? 0) !== rotationsBefore;
    this.running.set(principal, identity.grantId);
    void principal.exited.then(() => {
      this.running.delete(principal);
      this.deps.lifecycle?.exited(this.entryOf(principal, identity.grantId));
      this.deps.limits?.slotFreed(identity.forgejoUserId);
    });
    logger.info("principal child started", { forgejo_user_id: identity.forgejoUserId, client_id: identity.clientId, pid: process.pid, era: verdict.era });
    return principal;
  }

  /** New calls go to `principal`; one whose token was replaced while it started is replaced in turn. */
  private serve(grantId: string, principal: Principal): void {
    this.live.set(grantId, principal);
    if (this.running.has(principal)) this.deps.lifecycle?.running(this.entryOf(principal, grantId));
    if (principal.staleToken) this.replace(grantId, principal, "the user's Forgejo token was refreshed while the child started");
  }

  /**
   * Make before break: the grant's next child starts with the user's current token while this one
   * serves; once it is ready, new calls go to it, the listen streams its era can move go with them, and
   * this one retires, finishing its calls in flight. If the next one cannot start (a cap, a refused
   * token, a failing child), this one retires all the same: it must not outlive its token, and the next call starts a child.
   */
  private replace(grantId: string, old: Principal, reason: string): void {
    if (old.replacing) return;
    old.replacing = true;
    if (old.dueTimer !== null) this.deps.timers.clearTimeout(old.dueTimer);
    old.dueTimer = null;
    const replacement = this.startReserved(old.identity).then(
      (next) => this.switchTo(grantId, old, next, reason),
      (error: unknown) => {
        this.deps.logger.warn("a principal's next child could not start; the old one retires anyway", { reason, error: error instanceof Error ? error.message : String(error) });
        this.retire(grantId, old, reason);
      },
    );
    this.replacements.add(replacement);
    void replacement.then(() => this.replacements.delete(replacement));
  }

  private switchTo(grantId: string, old: Principal, next: Principal, reason: string): void {
    const current = this.live.get(grantId);
    // The old one went while the next started (stopped, evicted, crashed) and the grant has another child: that one serves.
    if (current !== old && (current !== undefined || this.starts.has(grantId))) {
      void this.stop(grantId, next, "another child took the grant's place while it started", "rotated");
      return;
    }
    this.starts.set(grantId, Promise.resolve(next));
    old.child.handOverListeners(next.child);
    this.serve(grantId, next);
    if (current === old) this.retire(grantId, old, reason);
    this.deps.logger.info("principal child replaced", { reason, old_pid: old.child.childPid, pid: next.child.childPid });
  }

  /** No new calls reach it: the next one starts a new child, and this one stops once its calls are over. */
  private retire(grantId: string, principal: Principal, reason: string): void {
    this.forget(grantId, principal);
    this.ended(principal, "rotated");
    this.deps.logger.info("principal child retiring", { reason, pid: principal.child.childPid });
    principal.child.retire(reason);
  }

  private stop(grantId: string, principal: Principal, reason: string, exit: ChildExitReason): Promise<void> {
    this.forget(grantId, principal);
    this.ended(principal, exit);
    this.deps.logger.info("principal child stopped", { reason, pid: principal.child.childPid });
    return principal.child.close(reason);
  }

  private openRetry(identity: SessionIdentity, retry: IncomingMessage): ReturnType<RequestStateSealer["open"]> {
    const params = retry.message.params as Record<string, unknown>;
    const binding = { grantId: identity.grantId, method: String(retry.message.method), paramsHash: paramsHash(params) };
    return typeof params.requestState === "string" ? this.sealer.open(params.requestState, binding, this.deps.timers.now()) : { ok: false, problem: "requestState must be a string" };
  }

  private heldElsewhere(holder: string | undefined): boolean {
    return holder !== undefined && holder !== this.deps.sharedStates?.replicaId;
  }

  /**
   * The retry of a call whose replica is gone: the original call (the retry's params without the retry's
   * own, which the state's MAC binds) runs again on this grant's child, whose requests are answered from
   * the retry's inputResponses under the keys the caller was asked; anything else it asks goes to the caller anew.
   */
  private async rerun(identity: SessionIdentity, retry: IncomingMessage, asked: string[], options: { sse?: boolean }): Promise<MessageStream> {
    const { inputResponses, requestState: _state, ...original } = retry.message.params as Record<string, unknown>;
    const given: Record<string, unknown> = {};
    for (const key of asked) {
      const response = (inputResponses as Record<string, unknown> | null | undefined)?.[key];
      if (response === null || typeof response !== "object" || Array.isArray(response)) throw this.retryRefused(`inputResponses[${JSON.stringify(key)}] must be the answer object`);
      given[key] = response;
    }
    const message = { ...retry.message, params: original };
    this.deps.logger.info("re-running a call whose replica is gone, with its caller's answers", { method: String(retry.message.method), answers: asked.length });
    return (await this.childFor(identity)).call({ raw: JSON.stringify(message), message }, { ...options, given });
  }

  /** A retry that resumes nothing: 400 -32602, counted. */
  private retryRefused(problem: string): McpRefusal {
    this.metrics.mrtr("rejected");
    return new McpRefusal(400, ErrorCode.InvalidParams, `Invalid params: ${problem}`);
  }

  /** Counts the child's end once, under the first reason it was given. */
  private ended(principal: Principal, reason: ChildExitReason): void {
    if (principal.ended !== null) return;
    principal.ended = reason;
    this.metrics.childExited(reason);
  }

  private forget(grantId: string, principal: Principal): void {
    if (principal.dueTimer !== null) this.deps.timers.clearTimeout(principal.dueTimer);
    principal.dueTimer = null;
    if (this.live.get(grantId) === principal) this.live.delete(grantId);
    const start = this.starts.get(grantId);
    if (start !== undefined) void start.then((started) => started === principal && this.starts.get(grantId) === start && this.starts.delete(grantId), () => {});
  }

  /**
   * The era probe, in a disposable sibling started exactly as the principal's child is about to be (same
   * spawn: sandbox, environment, and this user's token — a child that checks its token at start must not
   * fail the probe for lack of one, and the user's own child gets that token a moment later anyway).
   * A child that cannot start at all throws SessionStartError, and nothing is cached.
   */
  private async probe(token: string): Promise<ProbeOutcome> {
    const id = `probe-${randomHex(12)}`;
    let process;
    try {
      process = this.deps.spawn({ sessionId: id, token });
    } catch (error) {
      if (error instanceof ChildStartError) throw new SessionStartError(error.message, error.lastStderrLine);
      throw error;
    }
    const logger = this.deps.logger.child({ era_probe: id });
    logger.info("child era probe started", { pid: process.pid });
    const outcome = await runProbe(process, { logger, timers: this.deps.timers, maxMessageBytes: this.deps.config.maxMessageBytes, timeoutMs: this.deps.probeTimeoutMs ?? PROBE_TIMEOUT_MS });
    logger.info("child era probed", { outcome: outcome.kind, verdict: probeVerdict(outcome).era });
    return outcome;
  }

  private get continuationDeadlineMs(): number {
    return this.deps.continuationDeadlineMs ?? CONTINUATION_DEADLINE_MS;
  }

  private get initializeTimeoutMs(): number {
    return this.deps.initializeTimeoutMs ?? 30_000;
  }

}
