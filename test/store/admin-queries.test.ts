// The admin command's queries on both dialects: grants by filter and by id with their client's name,
// clients with their active grants and last issue, and a client's removal with what it held.
import { describe, expect, test } from "bun:test";
import { PgAdminQueries, SqliteAdminQueries, type AdminQueries } from "../../src/store/admin-queries.ts";
import type { PgStore } from "../../src/store/pg-store.ts";
import type { SqliteStore } from "../../src/store/sqlite-store.ts";
import type { Store } from "../../src/store/store.ts";
import { storeDialects } from "../helpers/store-dialects.ts";

const dialects = await storeDialects();
const queriesOver = (name: string, store: Store): AdminQueries =>
  name === "SQLite" ? new SqliteAdminQueries(store as SqliteStore) : new PgAdminQueries(store as PgStore);

describe.each(dialects)("admin queries on %s", (name, dialect) => {
  async function seeded() {
    const store = await dialect.open();
    for (const [id, createdAt] of [["c1", 10], ["c2", 20]] as const) {
      await store.createClient({ id, secretHash: null, tokenEndpointAuthMethod: "none", name: `Client ${id}`, redirectUris: [], metadata: {}, createdAt });
    }
    const alice = await store.findOrCreateGrant({ id: "g1", clientId: "c1", forgejoUserId: 7, forgejoLogin: "alice", scope: "mcp", now: 100 });
    const bob = await store.findOrCreateGrant({ id: "g2", clientId: "c1", forgejoUserId: 8, forgejoLogin: "bob", scope: "mcp", now: 200 });
    await store.insertTokenPair({ grantId: bob.id, familyId: "f", clientId: "c1", resource: "r", scope: "mcp", accessTokenHash: "a", accessExpiresAt: 5_000_000_000_000, refreshTokenHash: null, refreshExpiresAt: null }, 4_000_000_000_000);
    return { store, queries: queriesOver(name, store), alice, bob };
  }

  test("active grants by filter, oldest first, and grants by id revoked or not", async () => {
    const { store, queries, alice, bob } = await seeded();
    expect((await queries.activeGrants()).map((grant) => [grant.grantId, grant.clientName, grant.forgejoLogin])).toEqual([
      [alice.id, "Client c1", "alice"],
      [bob.id, "Client c1", "bob"],
    ]);
    expect((await queries.activeGrants({ forgejoLogin: "bob" })).map((grant) => grant.grantId)).toEqual([bob.id]);
    await store.revokeGrant(alice.id, 300);
    expect((await queries.activeGrants({ clientId: "c1" })).map((grant) => grant.grantId)).toEqual([bob.id]);
    expect([...(await queries.grantsById([alice.id, alice.id, "nope"])).keys()]).toEqual([alice.id]);
  });

  test("clients, newest first, with active grants and when a token was last issued (64-bit milliseconds)", async () => {
    const { queries } = await seeded();
    expect(await queries.clients()).toEqual([
      { clientId: "c2", name: "Client c2", tokenEndpointAuthMethod: "none", createdAt: 20, activeGrants: 0, lastTokenIssuedAt: null },
      { clientId: "c1", name: "Client c1", tokenEndpointAuthMethod: "none", createdAt: 10, activeGrants: 2, lastTokenIssuedAt: 4_000_000_000_000 },
    ]);
  });

  test("deleting a client revokes its grants first, then removes it with its rows; an unknown one is not deleted", async () => {
    const { store, queries, alice, bob } = await seeded();
    const heard: string[] = [];
    store.onRevocation((grantId) => heard.push(grantId));
    expect(await queries.deleteClient("c1", 500)).toEqual({ deleted: true, revokedGrants: [alice.id, bob.id] });
    expect(heard.sort()).toEqual([alice.id, bob.id].sort());
    expect(await store.getClient("c1")).toBeUndefined();
    expect(await dialect.rowCount(store, "access_tokens")).toBe(0);
    expect(await queries.deleteClient("c1", 600)).toEqual({ deleted: false, revokedGrants: [] });
  });
});
