// What the admin command asks of a running broker, answered from its registry, its principals' children and
// the store: the live sessions and children, revocation (through the store's revocation path, as on
// /oauth/revoke), the clients and their removal, and drain.
import type { SessionDirectory } from "../replicas/session-directory.ts";
import type { PrincipalChildren } from "../modern/principals.ts";
import type { SessionRegistry } from "../session/registry.ts";
import type { AdminQueries, GrantFilter } from "../store/admin-queries.ts";
import type { Store } from "../store/store.ts";
import type { Timers } from "../supervisor/timers.ts";
import type { ClientsAnswer, DeleteClientAnswer, DrainProgress, RevokeAnswer, RevokeTarget, SessionRow, SessionsAnswer } from "./protocol.ts";

export interface AdminServiceDeps {
  registry: Pick<SessionRegistry, "list" | "drain" | "childrenHoldingSlots">;
  principals: Pick<PrincipalChildren, "list">;
  queries: AdminQueries;
  store: Pick<Store, "revokeGrant">;
  timers: Timers;
  /** The clock the store's revocations are stamped with (the OAuth side's). */
  now: () => number;
  /** What the listing calls this broker. */
  replica: string;
  rssOf: (pid: number) => number | null;
  /** With Redis: the other live replicas' legacy sessions, listed beside this one's. */
  directory?: Pick<SessionDirectory, "othersLive">;
  /** How often a drain looks at the children left; 250 ms by default. */
  drainPollMs?: number;
}

/** Nothing matched what the operator named (exit 1). */
export class AdminNotFoundError extends Error {}

export class AdminService {
  constructor(private readonly deps: AdminServiceDeps) {}

  /**
   * Every live legacy session and principal child, oldest first (those of unknown age last); only `user`'s (a
   * Forgejo login) when given. With Redis, also the other live replicas' legacy sessions from the directory.
   */
  async sessions(user?: string): Promise<SessionsAnswer> {
    const now = this.deps.timers.now();
    const legacy = this.deps.registry.list();
    const modern = this.deps.principals.list();
    const remote = (await this.deps.directory?.othersLive()) ?? [];
    const grants = await this.deps.queries.grantsById([...legacy.map((s) => s.binding.grantId), ...modern.map((p) => p.grantId), ...remote.map((s) => s.entry.grantId)]);
    const row = (era: SessionRow["era"], id: string, grantId: string, forgejoUserId: number, startedAt: number, lastActivity: number, busy: boolean, pid: number, serving: boolean): SessionRow => {
      const grant = grants.get(grantId);
      return {
        era,
        id,
        user: grant?.forgejoLogin ?? `#${forgejoUserId}`,
        forgejoUserId,
        clientId: grant?.clientId ?? "",
        clientName: grant?.clientName ?? "",
        grantId,
        ageS: seconds(now - startedAt),
        // A session with a request in flight or a stream open is in use, however long ago it last heard from its client.
        idleS: busy ? 0 : seconds(now - lastActivity),
        replica: this.deps.replica,
        pid,
        rssBytes: this.deps.rssOf(pid),
        state: serving ? "serving" : "retiring",
      };
    };
    const rows = [
      ...legacy.map((s) => row("legacy", s.id, s.binding.grantId, s.binding.forgejoUserId, s.startedAt, s.lastActivity, s.inFlight + s.activeStreams > 0, s.childPid, true)),
      ...modern.map((p) =>
        row("modern", p.grantId, p.grantId, p.forgejoUserId, p.startedAt, p.child.lastActivity, p.child.inFlight + p.child.listening > 0, p.child.childPid, p.serving),
      ),
      ...remote.map(({ sessionId, entry, ownerUrl }): SessionRow => {
        const grant = grants.get(entry.grantId);
        return {
          era: "legacy",
          id: sessionId,
          user: grant?.forgejoLogin ?? "",
          forgejoUserId: grant?.forgejoUserId ?? 0,
          clientId: grant?.clientId ?? "",
          clientName: grant?.clientName ?? "",
          grantId: entry.grantId,
          ageS: entry.startedAt === undefined ? null : seconds(now - entry.startedAt),
          idleS: null,
          replica: ownerUrl,
          pid: null,
          rssBytes: null,
          state: "serving",
        };
      }),
    ];
    return { sessions: rows.filter((r) => user === undefined || r.user === user).sort((a, b) => (b.ageS ?? -1) - (a.ageS ?? -1)) };
  }

  /** Revokes every active grant the target names; their sessions and principal children end as on /oauth/revoke. Throws AdminNotFoundError. */
  async revoke(target: RevokeTarget): Promise<RevokeAnswer> {
    const filter: GrantFilter = "user" in target ? { forgejoLogin: target.user } : "client" in target ? { clientId: target.client } : { grantId: target.grant };
    const grants = (await this.deps.queries.activeGrants(filter)).map((grant) => grant.grantId);
    if (grants.length === 0) throw new AdminNotFoundError(`no active grant for ${describe(target)}`);
    const endedSessions = this.liveOn(grants);
    for (const grantId of grants) await this.deps.store.revokeGrant(grantId, this.deps.now());
    return { revokedGrants: grants, endedSessions };
  }

  async clients(): Promise<ClientsAnswer> {
    return { clients: await this.deps.queries.clients() };
  }

  /** Revokes the client's grants (ending their sessions), then removes it. Throws AdminNotFoundError. */
  async deleteClient(clientId: string): Promise<DeleteClientAnswer> {
    const endedSessions = this.liveOn((await this.deps.queries.activeGrants({ clientId })).map((grant) => grant.grantId));
    const { deleted, revokedGrants } = await this.deps.queries.deleteClient(clientId, this.deps.now());
    if (!deleted) throw new AdminNotFoundError(`no client ${clientId}`);
    return { clientId, revokedGrants, endedSessions };
  }

  /**
   * Stops new sessions and principal children from starting here (they get 503 with Retry-After), then reports
   * the children left at once and whenever the count changes, ending with done once none is left.
   */
  async *drain(): AsyncGenerator<DrainProgress> {
    this.deps.registry.drain();
    let reported = -1;
    for (;;) {
      const children = this.deps.registry.childrenHoldingSlots;
      if (children === 0) {
        yield { children, done: true };
        return;
      }
      if (children !== reported) yield { children, done: false };
      reported = children;
      await new Promise<void>((resolve) => this.deps.timers.setTimeout(resolve, this.deps.drainPollMs ?? 250));
    }
  }

  /** Live sessions and serving principal children on these grants. */
  private liveOn(grantIds: string[]): number {
    const grants = new Set(grantIds);
    const legacy = this.deps.registry.list().filter((s) => grants.has(s.binding.grantId)).length;
    const modern = this.deps.principals.list().filter((p) => p.serving && grants.has(p.grantId)).length;
    return legacy + modern;
  }
}

function seconds(ms: number): number {
  return Math.max(0, Math.floor(ms / 1000));
}

function describe(target: RevokeTarget): string {
  if ("user" in target) return `user ${target.user}`;
  if ("client" in target) return `client ${target.client}`;
  return `grant ${target.grant}`;
}
