// What the admin command asks of a running broker, answered from its registry, its principals' children, the Redis
// directories and the store: the live sessions and children (this replica's and the others'), revocation (through the
// store's revocation path, as on /oauth/revoke), the clients and their removal, and drain.
import type { ChildEra } from "../modern/child-era.ts";
import { recordOf, type ListedPrincipal, type PrincipalDirectory, type PrincipalRecord } from "../replicas/principal-directory.ts";
import { RedisUnavailableError } from "../replicas/redis-connection.ts";
import type { ListedSession, SessionDirectory } from "../replicas/session-directory.ts";
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
  /** With Redis: the other live replicas' principal children. */
  principalDirectory?: Pick<PrincipalDirectory, "othersLive">;
  /** How often a drain looks at the children left; 250 ms by default. */
  drainPollMs?: number;
}

/** Nothing matched what the operator named (exit 1). */
export class AdminNotFoundError extends Error {}

export class AdminService {
  constructor(private readonly deps: AdminServiceDeps) {}

  /**
   * Every live legacy session and principal child, oldest first (those of unknown age last); only `user`'s (a
   * Forgejo login) when given. With Redis, also the other live replicas' legacy sessions and principal children
   * from the directories; while Redis does not answer, this replica's own only, marked partial.
   */
  async sessions(user?: string): Promise<SessionsAnswer> {
    const now = this.deps.timers.now();
    const legacy = this.deps.registry.list();
    const modern = this.deps.principals.list();
    const others = await this.otherReplicas();
    const grantIds = [...legacy.map((s) => s.binding.grantId), ...modern.map((p) => p.grantId), ...others.sessions.map((s) => s.entry.grantId), ...others.principals.map((p) => p.record.grantId)];
    const grants = await this.deps.queries.grantsById(grantIds);
    const row = (listed: Listed): SessionRow => {
      const grant = grants.get(listed.grantId);
      return {
        era: listed.era,
        id: listed.id,
        user: grant?.forgejoLogin ?? `#${listed.forgejoUserId}`,
        forgejoUserId: listed.forgejoUserId,
        clientId: grant?.clientId ?? "",
        clientName: grant?.clientName ?? "",
        grantId: listed.grantId,
        ...(listed.childEra === undefined ? {} : { childEra: listed.childEra }),
        ageS: seconds(now - listed.startedAt),
        // A session with a request in flight or a stream open is in use, however long ago it last heard from its client.
        idleS: listed.busy ? 0 : seconds(now - listed.lastActivity),
        replica: listed.replica,
        pid: listed.pid,
        rssBytes: listed.rssBytes,
        state: listed.serving ? "serving" : "retiring",
      };
    };
    const here = this.deps.replica;
    const rows = [
      ...legacy.map((s) =>
        row({ era: "legacy", id: s.id, grantId: s.binding.grantId, forgejoUserId: s.binding.forgejoUserId, startedAt: s.startedAt, lastActivity: s.lastActivity, busy: s.inFlight + s.activeStreams > 0, pid: s.childPid, rssBytes: this.deps.rssOf(s.childPid), serving: true, replica: here }),
      ),
      ...modern.map((p) => row({ ...principalListed(recordOf(p, this.deps.rssOf(p.child.childPid))), replica: here })),
      ...others.principals.map(({ record, ownerUrl }) => row({ ...principalListed(record), replica: ownerUrl })),
      ...others.sessions.map(({ sessionId, entry, ownerUrl }): SessionRow => {
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
    const sessions = rows.filter((r) => user === undefined || r.user === user).sort((a, b) => (b.ageS ?? -1) - (a.ageS ?? -1));
    return others.warning === null ? { sessions, partial: false } : { sessions, partial: true, warning: others.warning };
  }

  /** The other replicas' sessions and principal children from Redis, or nothing and why, when Redis does not answer. */
  private async otherReplicas(): Promise<{ sessions: ListedSession[]; principals: ListedPrincipal[]; warning: string | null }> {
    try {
      const [sessions, principals] = await Promise.all([this.deps.directory?.othersLive() ?? [], this.deps.principalDirectory?.othersLive() ?? []]);
      return { sessions, principals, warning: null };
    } catch (error) {
      return { sessions: [], principals: [], warning: `other replicas not listed: ${redisProblem(error)}` };
    }
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

/** What a listing row is made from, wherever the session or child runs. */
interface Listed {
  era: SessionRow["era"];
  id: string;
  grantId: string;
  forgejoUserId: number;
  childEra?: ChildEra;
  startedAt: number;
  lastActivity: number;
  busy: boolean;
  pid: number;
  rssBytes: number | null;
  serving: boolean;
  replica: string;
}

/** A principal child, here or elsewhere, by what the principal directory records of it. */
function principalListed(record: PrincipalRecord): Omit<Listed, "replica"> {
  return { era: "modern", id: record.grantId, ...record };
}

/** Why Redis gave no listing: not reached (down, too slow, the connection lost mid-way), or an error it answered. */
function redisProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // Bun's RedisClient names a lost connection ERR_REDIS_CONNECTION_CLOSED (and its kin); a reply error is ERR_REDIS_SERVER_ERROR.
  const code = (error as { code?: unknown } | null)?.code;
  const unreachable = error instanceof RedisUnavailableError || (typeof code === "string" && code.startsWith("ERR_REDIS_CONNECTION"));
  return `${unreachable ? "Redis unreachable" : "Redis failed"} (${message})`;
}

function seconds(ms: number): number {
  return Math.max(0, Math.floor(ms / 1000));
}

function describe(target: RevokeTarget): string {
  if ("user" in target) return `user ${target.user}`;
  if ("client" in target) return `client ${target.client}`;
  return `grant ${target.grant}`;
}
