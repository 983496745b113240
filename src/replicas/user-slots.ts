// BROKER_MAX_SESSIONS_PER_USER across replicas: a Redis hash per user with one field per replica (the slots it
// holds: sessions, principal children, starts, children exiting), checked and taken in one script that drops dead replicas' fields.
import type { Logger } from "../log.ts";
import { livenessKey } from "./liveness.ts";
import type { RedisConnection } from "./redis-connection.ts";

/**
 * Takes a slot: KEYS[1] the user's hash; ARGV: this replica's id, the slots it would hold with the new one,
 * the cap, the liveness keys' prefix. The fields of replicas without a liveness key are dropped (they died
 * holding them) and not counted. Returns -1 when taken (this replica's field set), else what the others hold.
 */
export const TAKE_USER_SLOT = `
local others = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local replica = fields[i]
  if replica ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[4] .. replica) == 1 then
      others = others + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], replica)
    end
  end
end
if others + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return others end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return -1`;

/** The verdict on a slot across replicas: taken, or refused with how many the other replicas hold. */
export type UserSlotVerdict = { taken: true } | { taken: false; elsewhere: number };

/** The shared part of the per-user cap, as the session registry uses it. */
export interface SharedUserSlots {
  /** Takes a slot if this replica's `holding` (the new slot included) and the others' stay within `cap`. Throws when Redis does not answer. */
  take(forgejoUserId: number, holding: number, cap: number): Promise<UserSlotVerdict>;
  /** This replica now holds `holding` of the user's slots (a session or child ended, a start failed). */
  update(forgejoUserId: number, holding: number): void;
}

export interface UserSlotsDeps {
  redis: Pick<RedisConnection, "command">;
  prefix: string;
  replicaId: string;
  timeoutMs: number;
  logger: Logger;
}

export function userSlotsKey(prefix: string, forgejoUserId: number): string {
  return `${prefix}user-slots:${forgejoUserId}`;
}

export class UserSlots implements SharedUserSlots {
  constructor(private readonly deps: UserSlotsDeps) {}

  async take(forgejoUserId: number, holding: number, cap: number): Promise<UserSlotVerdict> {
    const { prefix, replicaId } = this.deps;
    const args = [TAKE_USER_SLOT, "1", userSlotsKey(prefix, forgejoUserId), replicaId, String(holding), String(cap), livenessKey(prefix, "")];
    const others = Number(await this.deps.redis.command((client) => client.send("EVAL", args), this.deps.timeoutMs));
    return others < 0 ? { taken: true } : { taken: false, elsewhere: others };
  }

  update(forgejoUserId: number, holding: number): void {
    const key = userSlotsKey(this.deps.prefix, forgejoUserId);
    const args = holding > 0 ? [key, this.deps.replicaId, String(holding)] : [key, this.deps.replicaId];
    this.deps.redis.command((client) => client.send(holding > 0 ? "HSET" : "HDEL", args), this.deps.timeoutMs).catch((error: unknown) => {
      // Counted high, the user's cap is only stricter until the next slot this replica takes for them rewrites the field.
      this.deps.logger.warn("could not update the user's session count across replicas", { forgejo_user_id: forgejoUserId, error: error instanceof Error ? error.message : String(error) });
    });
  }
}
