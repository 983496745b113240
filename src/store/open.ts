// Opens the store the configuration names: PostgreSQL when BROKER_DATABASE_URL is set, else the
// embedded SQLite file in the data directory; with the admin command's queries and health checks over the same database.
import { join } from "node:path";
import type { BrokerConfig } from "../config.ts";
import { PgAdminQueries, SqliteAdminQueries, type AdminQueries } from "./admin-queries.ts";
import { PgStore } from "./pg-store.ts";
import { SqliteStore } from "./sqlite-store.ts";
import type { Store } from "./store.ts";

export interface OpenedStore {
  store: Store;
  queries: AdminQueries;
  /** The /healthz parts it answers for: the store, and with PostgreSQL the database server too. */
  health: { name: string; check: () => Promise<void> }[];
}

/** `sqlitePath` replaces broker.sqlite in the data directory: tests share one file between two brokers, as replicas share PostgreSQL. */
export async function openStore(config: Pick<BrokerConfig, "dataDir" | "databaseUrl" | "redis">, sqlitePath?: string): Promise<OpenedStore> {
  if (config.databaseUrl !== null) {
    // Redis's channel carries revocations between replicas when it is configured; PostgreSQL's NOTIFY only when it is not.
    const store = await PgStore.open(config.databaseUrl, { notifyRevocations: config.redis === undefined });
    const ping = () => store.ping();
    return { store, queries: new PgAdminQueries(store), health: [{ name: "store", check: ping }, { name: "database", check: ping }] };
  }
  const store = SqliteStore.open(sqlitePath ?? join(config.dataDir, "broker.sqlite"));
  return { store, queries: new SqliteAdminQueries(store), health: [{ name: "store", check: () => store.ping() }] };
}
