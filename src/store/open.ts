// Opens the store the configuration names: PostgreSQL when BROKER_DATABASE_URL is set, else the
// embedded SQLite file in the data directory; with the admin command's queries over the same database.
import { join } from "node:path";
import type { BrokerConfig } from "../config.ts";
import { SqliteAdminQueries, type AdminQueries } from "./admin-queries.ts";
import { SqliteStore } from "./sqlite-store.ts";
import type { Store } from "./store.ts";

export interface OpenedStore {
  store: Store;
  queries: AdminQueries;
}

export async function openStore(config: Pick<BrokerConfig, "dataDir">): Promise<OpenedStore> {
  const store = SqliteStore.open(join(config.dataDir, "broker.sqlite"));
  return { store, queries: new SqliteAdminQueries(store) };
}
